#!/usr/bin/env bash
# Install what Quarry's build, tests and quickstart need on Debian 12, and nothing that is already
# there. Safe to run again: it only calls apt-get when a package is missing.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/install-deps.sh [--check] [--help]

Installs, on Debian 12 (bookworm), the system packages Quarry needs and the Rust components of
the toolchain pinned in rust-toolchain.toml. Only missing pieces are installed; it prints what it
installed. Needs root or sudo when a package is missing.

  --check   only report what is missing; exit 1 if anything is
  --help    show this help

Packages: podman skopeo buildah redis-server protobuf-compiler docker-registry shellcheck jq curl
git ca-certificates containernetworking-plugins uidmap build-essential pkg-config runc
busybox-static libssl-dev libssh2-1-dev zlib1g-dev openssh-server openssh-client
qemu-system-x86 socat e2fsprogs
debootstrap squashfs-tools cpio binutils g++
EOF
}

CHECK_ONLY=0
for arg in "$@"; do
    case "$arg" in
        --check) CHECK_ONLY=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install-deps: unknown argument: $arg (see --help)" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

PACKAGES=(
    podman skopeo buildah redis-server protobuf-compiler docker-registry shellcheck jq curl git
    ca-certificates containernetworking-plugins uidmap build-essential pkg-config
    # builds: podman's RUN steps need runc here (crun refuses this host's cgroup layout); the
    # test and quickstart base image is made from busybox-static; git2 links libssl and libssh2
    runc busybox-static libssl-dev libssh2-1-dev zlib1g-dev
    # git over ssh in the agent's source tests: a private sshd on loopback
    openssh-server openssh-client
    # VM executor: QEMU runs each build's VM; socat is the per-connection guestfwd relay;
    # mkfs.ext4 makes the scratch disk
    qemu-system-x86 socat e2fsprogs
    # VM image (qemu-image build): debootstrap makes the root tree, mksquashfs packs it, strip
    # shrinks the binaries; cpio reads the initramfs in its unit tests
    debootstrap squashfs-tools cpio binutils
    # fuzzing (scripts/fuzz.sh): cargo-fuzz compiles libFuzzer, which is C++
    g++
)

installed=()
missing=()
for pkg in "${PACKAGES[@]}"; do
    # dpkg -s also succeeds for removed-but-configured packages, so look at the status line.
    if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        continue
    fi
    missing+=("$pkg")
done

if ((${#missing[@]} > 0)); then
    if ((CHECK_ONLY)); then
        echo "install-deps: missing packages: ${missing[*]}"
    else
        SUDO=()
        if ((EUID != 0)); then
            if ! command -v sudo >/dev/null; then
                echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2
                exit 1
            fi
            SUDO=(sudo)
        fi
        echo "install-deps: installing ${missing[*]}"
        "${SUDO[@]}" apt-get update -q
        # Recommends are left out on purpose: the packages listed above are all the tests use.
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends "${missing[@]}"
        installed+=("${missing[@]}")
        # Debian's docker-registry package starts a registry service on :5000, the port the
        # quickstart uses. We only need its binary (benchmark and differential baseline), so when
        # this script is what installed it, stop and disable that service.
        if [[ " ${missing[*]} " == *" docker-registry "* ]] && command -v systemctl >/dev/null \
            && systemctl is-enabled docker-registry.service >/dev/null 2>&1; then
            "${SUDO[@]}" systemctl disable --now docker-registry.service || true
            echo "install-deps: disabled docker-registry.service (only its binary is used)"
        fi
        missing=()
    fi
fi

# Rust: rustup reads the channel and components from rust-toolchain.toml.
channel="$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$ROOT/rust-toolchain.toml")"
if ! command -v cargo >/dev/null || ! command -v rustup >/dev/null; then
    cat >&2 <<EOF
install-deps: cargo/rustup not found. Install rustup (as the user who will build), then re-run:

    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain none
    . "\$HOME/.cargo/env"
    rustup toolchain install $channel --profile minimal --component rustfmt,clippy
EOF
    exit 1
fi

if ! rustup toolchain list | grep -q "^$channel"; then
    if ((CHECK_ONLY)); then
        missing+=("rust-$channel")
    else
        rustup toolchain install "$channel" --profile minimal --component rustfmt,clippy
        installed+=("rust-$channel")
    fi
fi
for comp in rustfmt clippy; do
    if rustup component list --installed --toolchain "$channel" 2>/dev/null | grep -q "^$comp"; then
        continue
    fi
    if ((CHECK_ONLY)); then
        missing+=("$comp")
    else
        rustup component add "$comp" --toolchain "$channel"
        installed+=("$comp")
    fi
done

if ((CHECK_ONLY)); then
    if ((${#missing[@]} > 0)); then
        echo "install-deps: missing: ${missing[*]}"
        exit 1
    fi
    echo "install-deps: nothing missing"
elif ((${#installed[@]} > 0)); then
    echo "install-deps: installed ${installed[*]}"
else
    echo "install-deps: nothing to install (all packages and rust $channel with rustfmt, clippy present)"
fi
