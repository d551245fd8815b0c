#!/usr/bin/env bash
# The README's test command and CI's entry point (.ci/run execs it): install what is missing, then
# run every test tier, each test exactly once, stopping at the first failing tier.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/test.sh [--no-install] [--tier NAME]... [--help]

Runs the test tiers in order, printing each tier's wall time and a summary table, and stops at
the first failing tier (exit 1, naming it):

  lint          scripts/lint.sh: rustfmt check, clippy -D warnings, rustdoc -D warnings, shellcheck
  unit          cargo test --lib --bins, then --doc: in-file unit and component tests, doctests
  fuzz          scripts/fuzz.sh --seconds 6: builds the triggers cargo-fuzz targets (stable,
                no sanitizer) and runs each for 6 s on a corpus seeded from fixtures/webhooks
  integration   cargo test --test '*': tests/*.rs, e.g. registry-core's conformance suite and
                crash tests against the live binary on 127.0.0.1
  heavy         cargo test --tests -- --ignored: only the #[ignore]d tests (real skopeo, podman,
                buildah clients; podman builds through buildman and builder-agent; the builder
                VM image is built first, then builds run inside QEMU VMs)

  --no-install  do not run scripts/install-deps.sh first
  --tier NAME   run only this tier (repeatable); the order above is kept
  --help        show this help

Environment: CARGO_TARGET_DIR (default target/), TMPDIR (default /tmp), QUARRY_CACHE_DIR
(default ~/.cache/quarry), QUARRY_STEP_TIMEOUT (seconds one cargo command may take, default
1800), QUARRY_TEST_SCRATCH (where build output, test data and the cache go when their default
places lack room, default /dev/shm/quarry-test; "no" turns that off), and anything cargo test
honours (RUST_TEST_THREADS, ...).
EOF
}

PROG='test'
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ALL_TIERS=(lint unit fuzz integration heavy)
declare -A TIER_LABEL=(
    [lint]="lint"
    [unit]="unit+component"
    [fuzz]="fuzz"
    [integration]="conformance+integration"
    [heavy]="heavy"
)

INSTALL=1
selected=()
while (($# > 0)); do
    case "$1" in
        --no-install) INSTALL=0 ;;
        --tier)
            need_one_of --tier "${2-}" "${ALL_TIERS[@]}"
            selected+=("$2")
            shift
            ;;
        -h|--help) usage; exit 0 ;;
        *) unknown_argument "$1" ;;
    esac
    shift
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."

TIMEOUT="${QUARRY_STEP_TIMEOUT:-1800}"
CARGO_TEST=(cargo test --workspace --locked)

# One command of a tier, bounded so that a hung test cannot hang CI. timeout signals the whole
# process group it creates, so cargo and the test binaries go together.
run() {
    echo "==> $*"
    timeout --kill-after=30 "$TIMEOUT" "$@"
}

tier_lint() { run scripts/lint.sh; }

tier_unit() {
    # --doc cannot be combined with other target selections, hence two runs.
    run "${CARGO_TEST[@]}" --lib --bins
    run "${CARGO_TEST[@]}" --doc
}

# Bounded: five targets of 6 s each plus a cold build (about 2 minutes on 2 busy cores) stay
# under 3 minutes; a warm build takes seconds.
tier_fuzz() { run scripts/fuzz.sh --seconds 6; }

# Every binary first: buildman's tests start builder-agent, which lives in another package.
build_bins() { run cargo build --workspace --locked --bins; }

# Integration test targets only (the lib and bin unit tests ran in tier "unit").
tier_integration() {
    build_bins
    run "${CARGO_TEST[@]}" --test '*'
}

tier_heavy() {
    local tool
    for tool in skopeo podman buildah runc redis-server git busybox qemu-system-x86_64 socat \
        debootstrap mksquashfs mkfs.ext4 ssh ssh-keygen; do
        command -v "$tool" >/dev/null || {
            echo "test: heavy tier needs $tool on PATH (scripts/install-deps.sh installs it)" >&2
            return 1
        }
    done
    ((EUID == 0)) || {
        echo "test: the heavy tier needs root: it builds the VM image with debootstrap and runs podman as root" >&2
        return 1
    }
    build_bins
    # The builder VM image for the qemu executor's tests: built from Debian packages into the
    # cache outside the clone (QUARRY_CACHE_DIR, default ~/.cache/quarry), rebuilt only when an
    # input changed (a warm rebuild after an agent change only re-packs the root filesystem).
    local t0
    t0="$(now_ms)"
    run "${CARGO_TARGET_DIR:-target}/debug/qemu-image" build
    echo "test: VM image ready in $(fmt_ms $(($(now_ms) - t0)))"
    # --tests = lib, bins and integration tests; -- --ignored runs only the ignored ones there.
    run "${CARGO_TEST[@]}" --tests -- --ignored
}

now_ms() { echo $((${EPOCHREALTIME/./} / 1000)); }
fmt_ms() { printf '%d:%02d.%d' $(($1 / 60000)) $(($1 / 1000 % 60)) $(($1 / 100 % 10)); }

declare -A STATUS=() ELAPSED=()
summary() {
    echo
    printf '%-26s %-9s %10s\n' "tier" "result" "wall time"
    printf '%-26s %-9s %10s\n' "--------------------------" "---------" "----------"
    local t
    for t in "${ALL_TIERS[@]}"; do
        printf '%-26s %-9s %10s\n' "${TIER_LABEL[$t]}" "${STATUS[$t]:-skipped}" "${ELAPSED[$t]:--}"
    done
    printf '%-26s %-9s %10s\n' "total" "" "$(fmt_ms $(($(now_ms) - START)))"
}

# Free space where the tests put their data: CI machines have been seen with well under 1 GiB
# left once the workspace is built, so each tier's line says how much there was.
disk_free() { df -Pm "${TMPDIR:-/tmp}" | awk 'NR == 2 { print $4 " MiB free in " $6 }'; }

# free_mib PATH: MiB free on the file system that holds PATH (or its nearest existing parent).
free_mib() {
    local p="$1"
    while [[ ! -e "$p" ]]; do p="$(dirname "$p")"; done
    df -Pm "$p" | awk 'NR == 2 { print $4 }'
}

# Scratch space, in MiB: a full cold run (2026-11-28) peaked at 7700 in the cargo target dir, 1320
# in QUARRY_CACHE_DIR (VM image and its debootstrap tarballs, fuzz corpus) and under 100 in TMPDIR
# (registries, podman storage and sparse VM disks of the running tests); NEED_* add a margin.
# CI machines have been seen with 110 MiB free on /, where not even lint compiles. Each of the
# three that the caller did not set, and whose default place lacks its room, moves under
# QUARRY_TEST_SCRATCH (default /dev/shm/quarry-test: the RAM-backed tmpfs, as large as memory on
# our machines) when that has room for it, and the run says so. Set the variables yourself (or
# QUARRY_TEST_SCRATCH=no) to keep everything where it is.
NEED_TARGET=9000 NEED_TMP=2000 NEED_CACHE=3000
use_scratch() {
    local scratch="${QUARRY_TEST_SCRATCH:-/dev/shm/quarry-test}" var need default sub have
    [[ "$scratch" == no ]] && return 0
    for var in CARGO_TARGET_DIR TMPDIR QUARRY_CACHE_DIR; do
        [[ -n "${!var:-}" ]] && continue
        case "$var" in
            CARGO_TARGET_DIR) need=$NEED_TARGET default="$PWD/target" sub=target ;;
            TMPDIR) need=$NEED_TMP default=/tmp sub=tmp ;;
            QUARRY_CACHE_DIR) need=$NEED_CACHE default="${XDG_CACHE_HOME:-$HOME/.cache}/quarry" sub=cache ;;
        esac
        have="$(free_mib "$default")"
        # Already there (a warm cache or target dir) counts as room.
        if [[ -d "$default" ]]; then have=$((have + $(du -sm "$default" | cut -f1))); fi
        ((have >= need)) && continue
        if (($(free_mib "$scratch") < need)); then
            echo "test: $default has $have MiB free, $need needed, and $scratch has no more room; continuing there" >&2
            continue
        fi
        mkdir -p "$scratch/$sub"
        export "$var=$scratch/$sub"
        echo "test: $default has $have MiB free, $need MiB needed: $var=${!var}"
    done
}

START="$(now_ms)"
use_scratch
echo "quarry tests: $(rustc --version 2>/dev/null || echo 'rustc missing'), $(nproc) cpus, target dir ${CARGO_TARGET_DIR:-target}, $(disk_free)"

if ((INSTALL)); then
    scripts/install-deps.sh
fi

for t in "${ALL_TIERS[@]}"; do
    if ((${#selected[@]} > 0)) && [[ " ${selected[*]} " != *" $t "* ]]; then
        continue
    fi
    echo
    echo "=== tier ${TIER_LABEL[$t]} ==="
    t0="$(now_ms)"
    # A function called as an `if` condition runs with errexit off, so a failing first command
    # would be masked by a passing last one; a subshell that sets -e itself keeps it on.
    set +e
    (set -e; "tier_$t")
    rc=$?
    set -e
    if ((rc == 0)); then STATUS[$t]=ok; else STATUS[$t]=FAILED; fi
    ELAPSED[$t]="$(fmt_ms $(($(now_ms) - t0)))"
    echo "=== tier ${TIER_LABEL[$t]}: ${STATUS[$t]} in ${ELAPSED[$t]} ($(disk_free)) ==="
    if [[ "${STATUS[$t]}" == FAILED ]]; then
        summary
        echo "test: FAILED in tier ${TIER_LABEL[$t]}" >&2
        exit 1
    fi
done

summary
echo "test: all selected tiers passed"
