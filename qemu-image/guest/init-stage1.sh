#!/bin/busybox sh
# shellcheck shell=dash
# Quarry builder VM, stage 1: the initramfs `/init` (busybox sh, PID 1).
#
# Loads the virtio, fw_cfg, squashfs and overlay modules (the Debian cloud kernel has them as
# modules), then either:
# - `quarry.probe=1` on the kernel command line: prints QUARRY-PROBE-OK and powers off (the
#   accelerator probe: proves the kernel boots and runs userspace);
# - otherwise: finds the disks by virtio serial (`quarry-root`: the squashfs image, read-only;
#   `quarry-scratch`: ext4 made by the host), mounts an overlay of the image on the scratch disk as
#   the new root, moves /scratch, /dev, /proc and /sys into it and switch_roots to
#   /sbin/quarry-init (or to `quarry.init=PATH` from the command line, for debugging).
# Any failure prints one line starting `quarry-stage1: error:` and powers the VM off.
#
# Built into the image by `qemu-image build` (included in the binary with include_str!).

/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys

fail() {
    echo "quarry-stage1: error: $*"
    sync
    poweroff -f
    # poweroff returned: exiting PID 1 panics the kernel, and `panic=-1 -no-reboot` ends QEMU.
    exit 1
}

# Split into words on purpose: one kernel parameter per word.
CMDLINE="$(cat /proc/cmdline)"
PROBE=0
INIT=/sbin/quarry-init
for word in $CMDLINE; do
    case "$word" in
        quarry.probe=1) PROBE=1 ;;
        quarry.init=*) INIT="${word#quarry.init=}" ;;
    esac
done

# Module parameters given on the kernel command line (QEMU adds `virtio_mmio.device=...` for
# each microvm device) only reach a module loaded later through modprobe, so pass them explicitly
# rather than depend on whether this busybox build reads /proc/cmdline itself.
params_for() {
    for word in $CMDLINE; do
        case "$word" in
            "$1".*=*) echo "${word#"$1".}" ;;
        esac
    done
}

# virtio_pci only matters on q35; on microvm it loads and finds no device.
for mod in virtio_mmio virtio_pci virtio_blk virtio_net virtio_console qemu_fw_cfg squashfs overlay; do
    # shellcheck disable=SC2046 # one word per parameter, as modprobe wants them
    modprobe "$mod" $(params_for "$mod") || fail "modprobe $mod failed (is the module in the initramfs?)"
done

if [ "$PROBE" = 1 ]; then
    echo "QUARRY-PROBE-OK"
    sync
    poweroff -f
    exit 1
fi

# The disk whose virtio serial is $1, e.g. /dev/vda; waits up to 10 s for it to appear.
disk_by_serial() {
    tries=0
    while [ "$tries" -lt 100 ]; do
        for serial in /sys/block/vd*/serial; do
            [ -r "$serial" ] || continue
            if [ "$(cat "$serial")" = "$1" ]; then
                dev="${serial%/serial}"
                echo "/dev/${dev##*/}"
                return 0
            fi
        done
        tries=$((tries + 1))
        sleep 0.1
    done
    return 1
}

ROOT_DEV="$(disk_by_serial quarry-root)" \
    || fail "no disk with serial quarry-root (attach the image's rootfs.squashfs with serial=quarry-root)"
SCRATCH_DEV="$(disk_by_serial quarry-scratch)" \
    || fail "no disk with serial quarry-scratch (attach an ext4 scratch disk with serial=quarry-scratch)"

mkdir -p /lower /scratch /newroot
mount -t squashfs -o ro "$ROOT_DEV" /lower || fail "mounting the root image $ROOT_DEV failed"
mount -t ext4 "$SCRATCH_DEV" /scratch || fail "mounting the scratch disk $SCRATCH_DEV failed (is it ext4?)"
mkdir -p /scratch/.root/upper /scratch/.root/work || fail "creating the overlay directories on the scratch disk failed"
mount -t overlay overlay \
    -o lowerdir=/lower,upperdir=/scratch/.root/upper,workdir=/scratch/.root/work /newroot \
    || fail "mounting the overlay root failed"

[ -x "/newroot$INIT" ] || fail "$INIT is missing or not executable in the root image"

for dir in scratch dev proc sys; do
    mkdir -p "/newroot/$dir"
    mount --move "/$dir" "/newroot/$dir" || fail "moving /$dir into the new root failed"
done

exec switch_root /newroot "$INIT"
