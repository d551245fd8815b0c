#!/usr/bin/env bash
# Builder VM benchmarks, in one run: the VM image (rebuild time from a warm package cache, size),
# and boot-to-agent-registered through buildman's qemu executor under each accelerator the probe
# allows (TCG always; KVM where a guest really boots under it), side by side with the popen
# executor's agent start as the baseline.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/bench-vm.sh [--runs N] [--only image|boot] [--keep] [--no-build] [--help]

Builds buildman, builder-agent, qemu-image and quarry-init in release mode, then:

image  `qemu-image build` (so the package cache is warm), then
       `qemu-image build --force --rebuild-base`: the time to rebuild the whole image from the
       warm package cache (debootstrap from cached .debs, squashfs, initramfs), then
       `qemu-image build --force` (only the binaries' layer: what a code change costs), and the
       size of each file of the image.
boot   starts `buildman serve` (temp DATA_DIR, free ports) with one executor, pushes a busybox
       base image, and N times (one at a time): uploads fixtures/builds/sample, POSTs a build,
       waits for the `unpacking` phase (builder-agent sets it right after RegisterBuildJob), and
       cancels the build (the VM is destroyed). From the server-recorded times of the build's
       log entries: build-scheduled (the executor has started the VM: QEMU spawned) ->
       unpacking (the agent in the guest registered) = boot to agent registered. Runs for
       `qemu` with VM_ACCEL tcg, for `qemu` with VM_ACCEL kvm when `qemu-image probe` finds KVM
       usable, and for `popen` (an agent process on the host: the floor). Prints median and p95
       (nearest rank) of each.

  --runs N      boots per executor (default 7)
  --only PART   run one part only (image or boot)
  --keep        keep the temp directory (server logs, raw JSON) and print its path
  --no-build    use the binaries already in the target directory
  --help        show this help

Needs: qemu-system-x86_64, socat, debootstrap, mksquashfs, jq, curl (scripts/install-deps.sh).
Environment: TMPDIR, CARGO_TARGET_DIR, QUARRY_CACHE_DIR (image cache; default ~/.cache/quarry),
BENCH_PORT (first HTTP port tried, default 5301).
EOF
}

RUNS=7 KEEP=0 BUILD=1 ONLY=""
while (($# > 0)); do
    case "$1" in
        --keep) KEEP=1 ;;
        --no-build) BUILD=0 ;;
        --only)
            [[ "${2:-}" == image || "${2:-}" == boot ]] || {
                echo "bench-vm: --only needs image or boot" >&2
                exit 2
            }
            ONLY="$2"
            shift
            ;;
        --runs)
            [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || { echo "bench-vm: --runs needs a number" >&2; exit 2; }
            RUNS="$2"
            shift
            ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench-vm: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
TARGET="${CARGO_TARGET_DIR:-target}"
[[ "$TARGET" == /* ]] || TARGET="$PWD/$TARGET"
BIN="$TARGET/release/buildman"
AGENT="$TARGET/release/builder-agent"
QIMG="$TARGET/release/qemu-image"

want() { [[ -z "$ONLY" || "$ONLY" == "$1" ]]; }
die() { echo "bench-vm: $*" >&2; exit 1; }
for tool in jq curl qemu-system-x86_64 socat debootstrap mksquashfs; do
    command -v "$tool" >/dev/null || die "$tool not found (scripts/install-deps.sh installs it)"
done
if ((BUILD)); then
    cargo build --release --locked -p buildman -p builder-agent -p qemu-image --bins
fi
for b in "$BIN" "$AGENT" "$QIMG" "$TARGET/release/quarry-init"; do
    [[ -x "$b" ]] || die "$b missing (drop --no-build)"
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/quarry-bench-vm.XXXXXX")"
cleanup() {
    if ((KEEP)); then echo "bench-vm: kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

now_ms() { echo $((${EPOCHREALTIME/./} / 1000)); }
api() { curl -fsS -H "@$HDR" -H 'Content-Type: application/json' "$@"; }
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local p="$1"
    while port_in_use "$p"; do p=$((p + 1)); done
    echo "$p"
}

# ---------------------------------------------------------------------------------------------
# image

run_image() {
    echo "bench-vm: qemu-image build (warming the package cache if needed)"
    "$QIMG" build >"$WORK/image-warm.log" 2>&1 || { tail -30 "$WORK/image-warm.log" >&2; return 1; }
    echo "bench-vm: qemu-image build --force --rebuild-base (whole image from the warm package cache)"
    local t0 t1 t2 dir
    t0="$(now_ms)"
    "$QIMG" build --force --rebuild-base >"$WORK/image-force.log" 2>&1 || { tail -30 "$WORK/image-force.log" >&2; return 1; }
    t1="$(now_ms)"
    echo "bench-vm: qemu-image build --force (binaries only)"
    "$QIMG" build --force >"$WORK/image-binaries.log" 2>&1 || { tail -30 "$WORK/image-binaries.log" >&2; return 1; }
    t2="$(now_ms)"
    dir="$("$QIMG" path)"
    jq -n --argjson s "$((t1 - t0))" --argjson b "$((t2 - t1))" --arg dir "$dir" \
        --argjson k "$(stat -c %s "$dir/vmlinuz")" --argjson i "$(stat -c %s "$dir/initrd.img")" \
        --argjson r "$(stat -c %s "$dir/rootfs.squashfs")" \
        '{rebuild_s: ($s / 1000), binaries_s: ($b / 1000), dir: $dir, kernel: $k, initrd: $i, rootfs: $r}' >"$WORK/image.json"
    grep -E '^\[[0-9]+/[0-9]+\]' "$WORK/image-force.log" | sed 's/^/    /' || true
}

# ---------------------------------------------------------------------------------------------
# boot

SERVER_PID=""
stop_server() {
    [[ -n "$SERVER_PID" ]] || return 0
    kill "$SERVER_PID" 2>/dev/null || true # SIGTERM: buildman stops its workers first
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

# One build started and cancelled once its agent registered; appends {boot_ms, post_ms}.
boot_run() {
    local label="$1" i="$2" drop file_id request uuid phase logs
    drop="$(api -X POST -d '{"mimeType": "application/gzip"}' "$URL/api/v1/filedrop/")"
    file_id="$(jq -r .file_id <<<"$drop")"
    curl -fsS -H "@$HDR" -X PUT --data-binary "@$WORK/sample.tar.gz" "$(jq -r .url <<<"$drop")" >/dev/null
    request="$(jq -n --arg f "$file_id" --arg b "$BASE" \
        '{file_id: $f, docker_tags: ["latest"], build_args: {BASE: $b}}')"
    uuid="$(api -X POST -d "$request" "$URL/api/v1/repository/admin/sample/build/" | jq -r .id)"
    local deadline=$((SECONDS + 600))
    while :; do
        logs="$(api "$URL/api/v1/repository/admin/sample/build/$uuid/logs?start=0")"
        jq -e '[.logs[] | select(.type == "phase" and .message == "unpacking")] | length > 0' \
            <<<"$logs" >/dev/null && break
        phase="$(api "$URL/api/v1/repository/admin/sample/build/$uuid/status" | jq -r .phase)"
        case "$phase" in complete | error | expired | cancelled)
            echo "bench-vm: build $uuid ended $phase before its agent registered" >&2
            return 1 ;;
        esac
        ((SECONDS < deadline)) || { echo "bench-vm: $uuid never registered within 600 s" >&2; return 1; }
        sleep 0.2
    done
    api -X DELETE "$URL/api/v1/repository/admin/sample/build/$uuid" >/dev/null
    # Wait until the worker is gone before the next boot (one VM at a time).
    deadline=$((SECONDS + 120))
    until [[ "$(api "$URL/api/v1/repository/admin/sample/build/$uuid/status" | jq -r .phase)" == cancelled ]]; do
        ((SECONDS < deadline)) || { echo "bench-vm: $uuid not cancelled within 120 s" >&2; return 1; }
        sleep 0.2
    done
    while pgrep -f "quarry-build-$uuid" >/dev/null; do sleep 0.2; done
    # data.datetime is UTC "YYYY-MM-DD HH:MM:SS.ffffff" (Quay's shape), written by the server.
    jq -c '
        def ms: (.[0:19] + "Z" | strptime("%Y-%m-%d %H:%M:%SZ") | mktime) * 1000
                + ((.[20:26] | tonumber) / 1000);
        [.logs[] | select(.type == "phase") | {(.message): (.data.datetime | ms)}] | add
        | {boot_ms: (.unpacking - .["build-scheduled"])}' <<<"$logs" >>"$WORK/boot-$label.jsonl"
    echo "bench-vm: $label run $i: $(tail -1 "$WORK/boot-$label.jsonl")"
}

# Start buildman with one executor (YAML lines of the EXECUTORS entry), run the boots, stop.
run_boot_with() {
    local label="$1" executor="$2" dir="$WORK/$1" port password i
    port="$(free_port "${BENCH_PORT:-5301}")"
    ADDR="127.0.0.1:$port" URL="http://127.0.0.1:$port"
    mkdir -p "$dir"
    cat >"$dir/config.yaml" <<EOF
SERVER_HOSTNAME: $ADDR
LISTEN_ADDR: $ADDR
DATA_DIR: $dir/data
SUPER_USERS: [admin]
FEATURE_BUILD_SUPPORT: true
BUILD_MANAGER:
  - ephemeral
  - GRPC_LISTEN_ADDR: 127.0.0.1:0
    EXECUTORS:
$executor
EOF
    password="$(head -c 18 /dev/urandom | base64 | tr -d '/+=')"
    REGISTRY_ADMIN_PASSWORD="$password" "$BIN" --config "$dir/config.yaml" \
        admin user create admin --email admin@localhost >/dev/null
    TOKEN="$("$BIN" --config "$dir/config.yaml" admin token create admin bench)"
    "$BIN" --config "$dir/config.yaml" admin repo create admin/busybox --public >/dev/null
    "$BIN" --config "$dir/config.yaml" admin repo create admin/sample >/dev/null
    HDR="$dir/.api-header"
    (umask 077 && printf 'Authorization: Bearer %s\n' "$TOKEN" >"$HDR")
    echo "bench-vm: buildman serve on $ADDR with executor $label ($dir)"
    "$BIN" --config "$dir/config.yaml" serve >"$dir/server.log" 2>&1 &
    SERVER_PID=$!
    local code
    for i in $(seq 600); do
        kill -0 "$SERVER_PID" 2>/dev/null || { tail -20 "$dir/server.log" >&2; die "buildman exited"; }
        code="$(curl -s -o /dev/null -w '%{http_code}' "$URL/v2/" || true)"
        [[ "$code" == 200 || "$code" == 401 ]] && break
        ((i < 600)) || die "buildman did not answer on $URL/v2/ within 60 s"
        sleep 0.1
    done
    BASE="$ADDR/admin/busybox:latest"
    scripts/make-base-image.sh "$BASE" --creds "\$token:$TOKEN" >/dev/null
    for i in $(seq "$RUNS"); do boot_run "$label" "$i"; done
    grep -m1 'VM accelerator: ' "$dir/server.log" | sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^/    /' || true
    stop_server
}

run_boot() {
    tar -C fixtures/builds/sample -czf "$WORK/sample.tar.gz" .
    "$QIMG" probe >"$WORK/probe.txt" 2>&1 || { cat "$WORK/probe.txt" >&2; return 1; }
    sed 's/^/    /' "$WORK/probe.txt"
    local vm="      - EXECUTOR: qemu
        VOLUME_SIZE: 8G
        MAX_LIFETIME_S: 900"
    run_boot_with qemu-tcg "$vm
        NAME: vm-tcg
        VM_ACCEL: tcg"
    if grep -qiE '^accel(erator)?:? *kvm' "$WORK/probe.txt"; then
        run_boot_with qemu-kvm "$vm
        NAME: vm-kvm
        VM_ACCEL: kvm"
    else
        echo "bench-vm: the probe found KVM unusable here: no KVM figures"
    fi
    run_boot_with popen "      - EXECUTOR: popen
        BUILDER_BINARY_LOCATION: $AGENT"
}

# ---------------------------------------------------------------------------------------------

echo "bench-vm: $(nproc) cpus, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg), $RUNS runs, work dir $WORK"
failed=()
for part in image boot; do
    want "$part" || continue
    set +e
    (set -e; trap stop_server EXIT; "run_$part")
    rc=$?
    set -e
    ((rc == 0)) || failed+=("$part")
done

if want image && [[ -s "$WORK/image.json" ]]; then
    echo
    jq -r '"image: \(.dir)",
        "  rebuild from warm package cache   \(.rebuild_s) s",
        "  rebuild of the binaries only      \(.binaries_s) s",
        "  vmlinuz                           \(.kernel / 1048576 * 10 | round / 10) MiB",
        "  initrd.img                        \(.initrd / 1048576 * 10 | round / 10) MiB",
        "  rootfs.squashfs                   \(.rootfs / 1048576 * 10 | round / 10) MiB",
        "  total                             \((.kernel + .initrd + .rootfs) / 1048576 * 10 | round / 10) MiB"' \
        "$WORK/image.json"
fi
if want boot; then
    echo
    echo "boot: build-scheduled (worker started) -> agent registered, $RUNS runs, one at a time"
    printf '%-14s %10s %10s %6s\n' executor "median ms" "p95 ms" runs
    for label in qemu-kvm qemu-tcg popen; do
        [[ -s "$WORK/boot-$label.jsonl" ]] || continue
        jq -s -r --arg l "$label" '
            [.[].boot_ms] | sort as $v
            | def pct($p): $v[((($p / 100) * ($v | length)) | ceil) - 1];
            [$l, (pct(50) | round | tostring), (pct(95) | round | tostring), ($v | length | tostring)]
            | @tsv' "$WORK/boot-$label.jsonl" | awk -F '\t' '{ printf "%-14s %10s %10s %6s\n", $1, $2, $3, $4 }'
    done
fi
if ((${#failed[@]} > 0)); then
    echo "bench-vm: FAILED: ${failed[*]} (logs kept under $WORK)" >&2
    KEEP=1
    exit 1
fi
