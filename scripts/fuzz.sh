#!/usr/bin/env bash
# Fuzz the triggers crate with cargo-fuzz on stable Rust (libFuzzer without a sanitizer): build
# every target, run each for a bounded time on a corpus kept outside the clone and seeded from
# fixtures/webhooks, and stop at the first crash, printing where its reproducer was written.
# Exit status: 0 no crash; 1 a crash, or a failed cargo-fuzz install, lock check or build;
# 2 a usage error.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/fuzz.sh [--seconds N] [--target T]... [--help]

Builds the cargo-fuzz targets in triggers/fuzz/ with `--sanitizer none` (stable Rust has no
sanitizers; libFuzzer's coverage guidance still works) and runs each one for N seconds:

  webhook_parse     every service's verify + parse on arbitrary headers and bodies
  template          tag template parse + render on JSON built from the input
  branchtag_filter  branchtag_regex compile + match against a ref
  escape_tag        Quay's tag escaping always gives a valid tag
  plan_decide       trigger config check + decide on a push built from the input

  --seconds N   how long each target runs (default 15)
  --target T    run only this target (repeatable)
  --help        show this help

Installs cargo-fuzz (pinned) into ~/.cargo/bin if it is missing; needs g++ for libFuzzer.
triggers/fuzz/Cargo.lock is checked with `cargo metadata --locked` first, never re-resolved.
Nothing is written inside the clone; under CACHE = ${QUARRY_CACHE_DIR:-~/.cache/quarry}:
  CACHE/fuzz-corpus/<target>/     the corpus, kept between runs: seeded from the fixtures and
                                  merged (libFuzzer -merge=1) after every run
  CACHE/fuzz-artifacts/<target>/  crash reproducers
Build output goes to ${CARGO_TARGET_DIR:-target}/fuzz (a relative CARGO_TARGET_DIR is taken
from the current directory, as cargo does).
Exit status: 0 no crash; 1 a crash or a failed install, lock check or build; 2 a usage error.
EOF
}

PROG='fuzz'
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CARGO_FUZZ_VERSION=0.13.2
ALL_TARGETS=(webhook_parse template branchtag_filter escape_tag plan_decide)

SECONDS_PER_TARGET=15
selected=()
while (($# > 0)); do
    case "$1" in
        --seconds)
            [[ "${2-}" =~ ^[1-9][0-9]*$ ]] || usage_error "--seconds needs a positive whole number"
            SECONDS_PER_TARGET="$2"
            shift
            ;;
        --target)
            need_one_of --target "${2-}" "${ALL_TARGETS[@]}"
            selected+=("$2")
            shift
            ;;
        -h|--help) usage; exit 0 ;;
        *) unknown_argument "$1" ;;
    esac
    shift
done
((${#selected[@]} > 0)) || selected=("${ALL_TARGETS[@]}")

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Absolute paths before any cd: cargo reads a relative CARGO_TARGET_DIR from the current directory.
absolute() { if [[ "$1" == /* ]]; then echo "$1"; else echo "$PWD/$1"; fi; }
TARGET_DIR="$(absolute "${CARGO_TARGET_DIR:-$ROOT/target}")/fuzz"
CACHE="$(absolute "${QUARRY_CACHE_DIR:-$HOME/.cache/quarry}")"
CORPUS="$CACHE/fuzz-corpus"
ARTIFACTS="$CACHE/fuzz-artifacts"
cd "$ROOT/triggers"

command -v g++ >/dev/null || {
    echo "fuzz: g++ is needed to build libFuzzer (scripts/install-deps.sh installs it)" >&2
    exit 1
}
if [[ "$(cargo fuzz --version 2>/dev/null || true)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
    echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION into ~/.cargo/bin"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION" || exit 1
fi
# cargo fuzz has no --locked: fail here if the fuzz crate's lock file would have to change.
cargo metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null || {
    echo "fuzz: triggers/fuzz/Cargo.lock is out of date; update it on purpose with" \
        "cargo update --manifest-path triggers/fuzz/Cargo.toml and commit it" >&2
    exit 1
}

HOST="$(rustc -vV | sed -n 's/^host: //p')"
# 16 codegen units instead of cargo-fuzz's 1: short runs are bound by the build, and 16 units
# roughly halve it for somewhat fewer executions per second.
BUILD_FLAGS=(--sanitizer none --codegen-units 16 --target "$HOST" --target-dir "$TARGET_DIR")
# The targets run directly rather than through `cargo fuzz run`, which would create
# triggers/fuzz/artifacts/ and triggers/fuzz/corpus/ in the clone.
BIN_DIR="$TARGET_DIR/$HOST/release"

now_ms() { echo $((${EPOCHREALTIME/./} / 1000)); }

t0="$(now_ms)"
echo "==> cargo fuzz build ${BUILD_FLAGS[*]}"
cargo fuzz build "${BUILD_FLAGS[@]}" || { echo "fuzz: the build failed" >&2; exit 1; }
echo "fuzz: built in $((($(now_ms) - t0) / 1000)) s"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/quarry-fuzz.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

FIXTURES="$ROOT/fixtures/webhooks"
# Seeds, in each target's input format (see the comments at the top of each fuzz target).
seed() {
    local target="$1" dir="$WORK/seeds/$1" n=0 f provider idx
    mkdir -p "$dir"
    case "$target" in
        webhook_parse)
            # Byte 0 = index in Service::ALL (github gitlab bitbucket custom-git); +8 picks the
            # custom-git URL as build_source, +0 an empty one. Then the headers, a blank line, the
            # body (.json, or .form for a form-encoded delivery).
            for f in "$FIXTURES"/*/*.json "$FIXTURES"/*/*.form; do
                [[ -e "$f" ]] || continue
                provider="$(basename "$(dirname "$f")")"
                case "$provider" in
                    github) idx=0 ;; gitlab) idx=1 ;; bitbucket) idx=2 ;; *) idx=11 ;;
                esac
                n=$((n + 1))
                {
                    printf '%b' "\\x$(printf '%02x' "$idx")"
                    cat "${f%.*}.headers"
                    printf '\n'
                    cat "$f"
                } >"$dir/$n"
            done
            ;;
        template)
            local tpl
            # shellcheck disable=SC2016 # the templates are literal ${...} text, not expansions
            for tpl in '${commit_info.short_sha}-${parsed_ref.branch}' 'v${parsed_ref.tag}' \
                '${commit_info.author.username}/${commit_info.date}'; do
                for f in "$FIXTURES"/custom-git/*.json; do
                    n=$((n + 1))
                    { printf '%s\n' "$tpl"; cat "$f"; } >"$dir/$n"
                done
            done
            ;;
        branchtag_filter)
            printf 'heads/(main|release-.*)\nrefs/heads/release-1.2' >"$dir/1"
            printf 'tags/v.*\nrefs/tags/v1.0' >"$dir/2"
            printf 'heads/a|tags/b\nrefs/remotes/origin/a' >"$dir/3"
            printf 'heads/(main|main-.*)\nrefs/heads/main-x' >"$dir/4"
            ;;
        escape_tag)
            printf 'feature/x' >"$dir/1"
            printf '2015-09-11T14:26:16-04:00' >"$dir/2"
            printf '.hidden-\xc3\xbcn\xc3\xaf' >"$dir/3"
            ;;
        plan_decide)
            # None: its input is decoded by `arbitrary`, so fixture files would be noise; the
            # corpus it grows itself is kept in the cache between runs.
            ;;
    esac
}

# Fold the kept corpus and the seeds into a minimal corpus (libFuzzer -merge=1), then swap it in.
merge() {
    local t="$1" fresh="$CORPUS/.$1.merging"
    rm -rf "$fresh"
    mkdir -p "$fresh"
    if "$BIN_DIR/$t" -merge=1 -artifact_prefix="$ARTIFACTS/$t/" \
        "$fresh" "$CORPUS/$t" "$WORK/seeds/$t" >"$WORK/$t.merge.log" 2>&1; then
        rm -rf "${CORPUS:?}/${t:?}"
        mv "$fresh" "$CORPUS/$t"
    else
        echo "fuzz: $t: merging the corpus failed, kept it unmerged:" >&2
        tail -n 5 "$WORK/$t.merge.log" >&2
        rm -rf "$fresh"
    fi
}

declare -A EXECS=() TOOK=()
failed=""
for t in "${selected[@]}"; do
    seed "$t"
    mkdir -p "$CORPUS/$t" "$ARTIFACTS/$t"
    log="$WORK/$t.log"
    echo "==> fuzz $t for ${SECONDS_PER_TARGET}s (corpus $CORPUS/$t)"
    start="$(now_ms)"
    set +e
    # New inputs go to the first directory, the kept corpus; the seeds are only read.
    "$BIN_DIR/$t" "$CORPUS/$t" "$WORK/seeds/$t" \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$ARTIFACTS/$t/" >"$log" 2>&1
    rc=$?
    set -e
    TOOK[$t]="$((($(now_ms) - start) / 1000)) s"
    EXECS[$t]="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    if ((rc != 0)); then
        tail -n 40 "$log" >&2
        reproducer="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)"
        echo "fuzz: $t FAILED (exit $rc); reproducer: ${reproducer:-none written}" >&2
        [[ -z "$reproducer" ]] || echo "fuzz: replay with: $BIN_DIR/$t $reproducer" >&2
        failed="$t"
        break
    fi
    merge "$t"
    echo "fuzz: $t: ${EXECS[$t]:-?} executions in ${TOOK[$t]}, no crash;" \
        "corpus $(find "$CORPUS/$t" -type f | wc -l) inputs"
done

echo
printf '%-18s %14s %8s\n' target executions time
for t in "${selected[@]}"; do
    printf '%-18s %14s %8s\n' "$t" "${EXECS[$t]:--}" "${TOOK[$t]:--}"
done
if [[ -n "$failed" ]]; then
    echo "fuzz: FAILED in $failed" >&2
    exit 1
fi
echo "fuzz: all targets ran without a crash"
