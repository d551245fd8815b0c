#!/usr/bin/env bash
# Side-by-side benchmark of registry-core and CNCF distribution (Debian's docker-registry 2.8) on
# this machine, in one run, with the same load generator (registry-core/examples/registry-load.rs).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/bench-registry.sh [--quick] [--only ours|distribution] [--keep] [--no-build] [--help]
                                 [-- registry-load arguments...]

Builds registry-core and the load generator in release mode, then for each server in turn
(registry-core with a user created by its admin CLI and the token flow; docker-registry with
filesystem storage and no auth), each in a fresh temp directory on its own loopback port:
starts it, runs the "large" scenario (32 x 32 MiB blobs pushed then pulled, 4 in flight) and the
"small" scenario (2,000 x 1 KiB blobs + 200 manifests pushed, then GET/HEAD, 16 in flight),
records the server's CPU time (utime+stime from /proc/PID/stat, per scenario) and peak RSS
(VmHWM from /proc/PID/status), and stops it. Prints one table with both servers and the ratio
ours / distribution for each figure.

  --quick         smoke run: 4 x 8 MiB blobs, 200 small blobs, 8 in flight
  --only SERVER   run one side only (ours or distribution)
  --keep          keep the temp directory (data, logs, raw JSON results) and print its path
  --no-build      use the binaries already in the target directory
  --help          show this help
Arguments after -- go to every registry-load run (see its --help), e.g. -- --upload monolithic.

Environment: TMPDIR (where the temp directory goes; needs about 2.2 GiB free for a full run),
CARGO_TARGET_DIR, BENCH_PORT (first port tried, default 5101).
EOF
}

QUICK=0 KEEP=0 BUILD=1 ONLY=""
EXTRA=()
while (($# > 0)); do
    case "$1" in
        --quick) QUICK=1 ;;
        --keep) KEEP=1 ;;
        --no-build) BUILD=0 ;;
        --only)
            [[ "${2:-}" == ours || "${2:-}" == distribution ]] || {
                echo "bench: --only needs ours or distribution" >&2
                exit 2
            }
            ONLY="$2"
            shift
            ;;
        -h|--help) usage; exit 0 ;;
        --) shift; EXTRA=("$@"); break ;;
        *) echo "bench: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
TARGET="${CARGO_TARGET_DIR:-target}"
BIN="$TARGET/release/registry-core"
LOAD="$TARGET/release/examples/registry-load"

if ((QUICK)); then
    LOAD_ARGS=(--blobs 4 --blob-mib 8 --small-blobs 200 --concurrency 8)
else
    LOAD_ARGS=()
fi
LOAD_ARGS+=("${EXTRA[@]}")

command -v docker-registry >/dev/null || [[ "$ONLY" == ours ]] || {
    echo "bench: docker-registry not found (scripts/install-deps.sh installs it)" >&2
    exit 1
}
command -v jq >/dev/null || { echo "bench: jq not found (scripts/install-deps.sh installs it)" >&2; exit 1; }

if ((BUILD)); then
    cargo build --release --locked -p registry-core --bin registry-core --example registry-load
fi
[[ -x "$BIN" && -x "$LOAD" ]] || { echo "bench: $BIN or $LOAD missing (drop --no-build)" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/quarry-bench.XXXXXX")"
SERVER_PID=""
cleanup() {
    if ((KEEP)); then echo "bench: kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local p="$1"
    while port_in_use "$p"; do p=$((p + 1)); done
    echo "$p"
}

# Wait (30 s at most) until the server answers /v2/ with 200 or 401.
wait_ready() {
    local url="$1" log="$2" code
    for _ in $(seq 300); do
        kill -0 "$SERVER_PID" 2>/dev/null || { echo "bench: server exited; log:" >&2; tail -20 "$log" >&2; return 1; }
        code="$(curl -s -o /dev/null -w '%{http_code}' "$url/v2/" || true)"
        [[ "$code" == 200 || "$code" == 401 ]] && return 0
        sleep 0.1
    done
    echo "bench: $url did not become ready in 30 s" >&2
    return 1
}

CLK_TCK="$(getconf CLK_TCK)"
# CPU seconds (user + system) the process has used so far, in hundredths.
cpu_centis() {
    local stat rest
    stat="$(<"/proc/$1/stat")"
    rest="${stat##*) }" # the command name may contain spaces; fields resume after ") "
    read -ra f <<<"$rest"
    echo $(((f[11] + f[12]) * 100 / CLK_TCK)) # utime, stime: fields 14 and 15 of stat
}
peak_rss_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }

# Run both scenarios against the server in $SERVER_PID; write $WORK/<name>.json.
measure() {
    local name="$1" url="$2"
    shift 2 # the rest: extra registry-load arguments (credentials)
    local results=() scenario c0 c1 line
    for scenario in large small; do
        c0="$(cpu_centis "$SERVER_PID")"
        line="$("$LOAD" --url "$url" --scenario "$scenario" "$@" "${LOAD_ARGS[@]}")"
        c1="$(cpu_centis "$SERVER_PID")"
        results+=("$(jq -c --argjson cpu "$(((c1 - c0) / 100)).$(printf '%02d' $(((c1 - c0) % 100)))" \
            '. + {server_cpu_s: $cpu}' <<<"$line")")
    done
    printf '%s\n' "${results[@]}" | jq -s --argjson rss "$(peak_rss_kib "$SERVER_PID")" \
        '{large: .[0], small: .[1], peak_rss_mib: ($rss / 1024)}' >"$WORK/$name.json"
}

stop_server() {
    [[ -n "$SERVER_PID" ]] || return 0
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

run_ours() {
    local dir="$WORK/ours" port password
    port="$(free_port "${BENCH_PORT:-5101}")"
    password="$(head -c 18 /dev/urandom | base64 | tr -d '/+=')"
    mkdir -p "$dir"
    cat >"$dir/config.yaml" <<EOF
SERVER_HOSTNAME: 127.0.0.1:$port
LISTEN_ADDR: 127.0.0.1:$port
DATA_DIR: $dir/data
SUPER_USERS: [bench]
EOF
    REGISTRY_ADMIN_PASSWORD="$password" "$BIN" --config "$dir/config.yaml" \
        admin user create bench --email bench@localhost >/dev/null
    echo "bench: registry-core on 127.0.0.1:$port ($dir)"
    RUST_LOG=warn "$BIN" --config "$dir/config.yaml" serve >"$dir/server.log" 2>&1 &
    SERVER_PID=$!
    wait_ready "http://127.0.0.1:$port" "$dir/server.log"
    REGISTRY_LOAD_PASSWORD="$password" measure ours "http://127.0.0.1:$port" --user bench
    stop_server
}

run_distribution() {
    local dir="$WORK/distribution" port
    port="$(free_port "$((${BENCH_PORT:-5101} + 10))")"
    mkdir -p "$dir/data"
    # Close to Debian's packaged config, minus auth, health checks and the per-request access log
    # (ours logs no line per request either); the in-memory blob descriptor cache is kept.
    cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  secret: $(head -c 18 /dev/urandom | base64 | tr -d '/+=')
EOF
    echo "bench: docker-registry $(docker-registry --version | awk '{print $3}') on 127.0.0.1:$port ($dir)"
    docker-registry serve "$dir/config.yml" >"$dir/server.log" 2>&1 &
    SERVER_PID=$!
    wait_ready "http://127.0.0.1:$port" "$dir/server.log"
    measure distribution "http://127.0.0.1:$port"
    stop_server
}

echo "bench: $(nproc) cpus, $(uname -r), mode $( ((QUICK)) && echo quick || echo full), work dir $WORK"
failed=()
for side in ours distribution; do
    [[ -z "$ONLY" || "$ONLY" == "$side" ]] || continue
    # A failing side is reported in the table and the exit status; the other side still runs.
    # The subshell keeps errexit on inside run_* (it would be off in an `if`); its EXIT trap
    # stops the server it started, whatever happens.
    set +e
    (set -e; trap stop_server EXIT; "run_$side")
    rc=$?
    set -e
    ((rc == 0)) || failed+=("$side")
done

# The table: one row per figure, "-" where a side did not run or failed.
jq -n -r \
    --slurpfile ours <(cat "$WORK/ours.json" 2>/dev/null || echo null) \
    --slurpfile dist <(cat "$WORK/distribution.json" 2>/dev/null || echo null) '
    def fig($v): if $v == null then "-" else ($v * 100 | round / 100 | tostring) end;
    def ratio($a; $b): if $a == null or $b == null or $b == 0 then "-"
        else ($a / $b * 100 | round / 100 | tostring) end;
    ($ours[0] // {}) as $o | ($dist[0] // {}) as $d
    | (["figure", "registry-core", "distribution", "ours/dist"] | @tsv),
      ([["large push MiB/s (higher is better)", ["large", "push_mib_s"]],
        ["large pull MiB/s (higher is better)", ["large", "pull_mib_s"]],
        ["large: server CPU s (lower is better)", ["large", "server_cpu_s"]],
        ["small push req/s (higher is better)", ["small", "push_req_s"]],
        ["small pull req/s (higher is better)", ["small", "pull_req_s"]],
        ["small: server CPU s (lower is better)", ["small", "server_cpu_s"]],
        ["peak RSS MiB (lower is better)", ["peak_rss_mib"]]][]
       | .[0] as $name | .[1] as $p | ($o | getpath($p)) as $a | ($d | getpath($p)) as $b
       | [$name, fig($a), fig($b), ratio($a; $b)] | @tsv)
' | awk -F '\t' '{ printf "%-40s %14s %14s %10s\n", $1, $2, $3, $4 }'

if ((${#failed[@]} > 0)); then
    echo "bench: FAILED: ${failed[*]} (server logs kept under $WORK)" >&2
    KEEP=1
    exit 1
fi
