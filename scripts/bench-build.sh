#!/usr/bin/env bash
# Build benchmarks, in one run: a small real build through Quarry against the same build and push
# done directly with buildah (the overhead ratio), and the scheduler's throughput with simulated
# agents at 1, 100 and 1,000 concurrent builds (buildman/examples/bench-scheduler).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/bench-build.sh [--quick] [--only e2e|scheduler] [--runs N] [--keep] [--no-build]
                              [--help]

Builds buildman, builder-agent and the bench-scheduler example in release mode, then:

e2e        starts `buildman serve` on its embedded defaults (temp DATA_DIR, free HTTP port,
           gRPC on a free loopback port, admin user and API token from `buildman admin`), pushes
           a busybox base image with scripts/make-base-image.sh, and builds fixtures/builds/sample
           N times (one at a time, uploaded as a .tar.gz, BASE passed as a build argument). Per
           run it records, from the client's clock at the build POST to the server-recorded
           `data.datetime` of the build's log entries: POST -> build-scheduled (the scheduler
           started an agent), POST -> unpacking (the agent registered: builder-agent sets
           UNPACKING right after RegisterBuildJob), and POST -> complete. Then N times the same
           build and push done directly: `buildah bud --isolation chroot` with vfs storage in a
           fresh temp root (so the base image is pulled each time, as each Quarry agent does) and
           `buildah push --tls-verify=false` to the same registry. Prints median and p95 (nearest
           rank: with 5 runs, p95 is the slowest) and the ratio Quarry / buildah.
scheduler  runs bench-scheduler with 1, 100 and 1,000 builds, ALLOWED_WORKER_COUNT = builds
           (each build in its own repository; agents hold until all registered, so that all run
           at once): per-call latency p50/p95/p99 of RegisterBuildJob, SetPhase, LogMessage and
           Heartbeat, builds/s, queue -> all registered, queue -> all complete, peak RSS (VmHWM),
           CPU time, peak descriptors. Server and simulated agents share one process.

  --quick         2 e2e runs; scheduler at 1 and 100 builds only
  --only PART     run one part only (e2e or scheduler)
  --runs N        e2e runs of each side (default 5, --quick 2)
  --keep          keep the temp directory (server log, raw JSON) and print its path
  --no-build      use the binaries already in the target directory
  --help          show this help

Needs: buildah, busybox-static, jq, curl (scripts/install-deps.sh installs them).
Environment: TMPDIR, CARGO_TARGET_DIR, BENCH_PORT (first HTTP port tried, default 5201),
BENCH_SCHEDULER_ARGS (extra bench-scheduler arguments, e.g. "--grpc-nodelay").
EOF
}

QUICK=0 KEEP=0 BUILD=1 ONLY="" RUNS=""
while (($# > 0)); do
    case "$1" in
        --quick) QUICK=1 ;;
        --keep) KEEP=1 ;;
        --no-build) BUILD=0 ;;
        --only)
            [[ "${2:-}" == e2e || "${2:-}" == scheduler ]] || {
                echo "bench-build: --only needs e2e or scheduler" >&2
                exit 2
            }
            ONLY="$2"
            shift
            ;;
        --runs)
            [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || { echo "bench-build: --runs needs a number" >&2; exit 2; }
            RUNS="$2"
            shift
            ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench-build: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
TARGET="${CARGO_TARGET_DIR:-target}"
[[ "$TARGET" == /* ]] || TARGET="$PWD/$TARGET"
BIN="$TARGET/release/buildman"
AGENT="$TARGET/release/builder-agent"
SCHED="$TARGET/release/examples/bench-scheduler"
if ((QUICK)); then SIZES=(1 100); else SIZES=(1 100 1000); fi
if [[ -z "$RUNS" ]]; then
    if ((QUICK)); then RUNS=2; else RUNS=5; fi
fi
read -ra SCHED_EXTRA <<<"${BENCH_SCHEDULER_ARGS:-}"

want() { [[ -z "$ONLY" || "$ONLY" == "$1" ]]; }
die() { echo "bench-build: $*" >&2; exit 1; }

for tool in jq curl; do
    command -v "$tool" >/dev/null || die "$tool not found (scripts/install-deps.sh installs it)"
done
if want e2e; then
    command -v buildah >/dev/null || die "buildah not found (scripts/install-deps.sh installs it)"
    [[ -x /bin/busybox ]] || die "/bin/busybox missing (scripts/install-deps.sh installs busybox-static)"
fi

if ((BUILD)); then
    if want e2e; then cargo build --release --locked -p buildman -p builder-agent --bins; fi
    if want scheduler; then cargo build --release --locked -p buildman --example bench-scheduler; fi
fi
if want e2e; then
    [[ -x "$BIN" && -x "$AGENT" ]] || die "$BIN or $AGENT missing (drop --no-build)"
fi
if want scheduler; then
    [[ -x "$SCHED" ]] || die "$SCHED missing (drop --no-build)"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/quarry-bench-build.XXXXXX")"
cleanup() {
    if ((KEEP)); then echo "bench-build: kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

now_ms() { echo $((${EPOCHREALTIME/./} / 1000)); }
# An authenticated REST call (run_e2e writes the header file).
api() { curl -fsS -H "@$HDR" -H 'Content-Type: application/json' "$@"; }
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local p="$1"
    while port_in_use "$p"; do p=$((p + 1)); done
    echo "$p"
}

# ---------------------------------------------------------------------------------------------
# e2e: Quarry against buildah

SERVER_PID=""
stop_server() {
    [[ -n "$SERVER_PID" ]] || return 0
    kill "$SERVER_PID" 2>/dev/null || true # SIGTERM: buildman stops its agents first
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

# One Quarry build of the sample; appends {scheduled_ms, registered_ms, complete_s, attempts}.
quarry_run() {
    local i="$1" drop file_id request t0 uuid phase view logs
    drop="$(api -X POST -d '{"mimeType": "application/gzip"}' "$URL/api/v1/filedrop/")"
    file_id="$(jq -r .file_id <<<"$drop")"
    curl -fsS -H "@$HDR" -X PUT --data-binary "@$WORK/sample.tar.gz" "$(jq -r .url <<<"$drop")" >/dev/null
    request="$(jq -n --arg f "$file_id" --arg b "$BASE" \
        '{file_id: $f, docker_tags: ["latest"], build_args: {BASE: $b, GREETING: "hello"}}')"
    t0="$(now_ms)"
    uuid="$(api -X POST -d "$request" "$URL/api/v1/repository/admin/sample/build/" | jq -r .id)"
    local deadline=$((SECONDS + 600))
    while :; do
        phase="$(api "$URL/api/v1/repository/admin/sample/build/$uuid/status" | jq -r .phase)"
        case "$phase" in complete | error | expired | cancelled) break ;; esac
        ((SECONDS < deadline)) || { echo "bench-build: build $uuid still $phase after 600 s" >&2; return 1; }
        sleep 0.2
    done
    view="$(api "$URL/api/v1/repository/admin/sample/build/$uuid")"
    logs="$(api "$URL/api/v1/repository/admin/sample/build/$uuid/logs?start=0")"
    if [[ "$phase" != complete ]]; then
        echo "bench-build: build $uuid ended $phase: $(jq -r '.error // "no reason recorded"' <<<"$view")" >&2
        return 1
    fi
    # data.datetime is UTC "YYYY-MM-DD HH:MM:SS.ffffff" (Quay's shape), written by the server.
    jq -c --argjson t0 "$t0" --argjson attempts "$(jq .attempts <<<"$view")" '
        def ms: (.[0:19] + "Z" | strptime("%Y-%m-%d %H:%M:%SZ") | mktime) * 1000
                + ((.[20:26] | tonumber) / 1000);
        [.logs[] | select(.type == "phase") | {(.message): (.data.datetime | ms)}] | add
        | {scheduled_ms: (.["build-scheduled"] - $t0), registered_ms: (.unpacking - $t0),
           complete_s: ((.complete - $t0) / 1000), attempts: $attempts}' <<<"$logs" \
        >>"$WORK/quarry.jsonl"
    echo "bench-build: quarry run $i: $(tail -1 "$WORK/quarry.jsonl")"
}

# One direct buildah build and push of the sample in a fresh storage root; appends
# {bud_s, push_s, total_s}.
buildah_run() {
    local i="$1" root t0 t1 t2
    # Short path: buildah refuses a run root longer than 50 characters.
    root="$(mktemp -d /tmp/qbb.XXXXXX)"
    mkdir -p "$root/tmp"
    printf 'unqualified-search-registries = []\n' >"$root/registries.conf"
    local b=(buildah --root "$root/root" --runroot "$root/run" --storage-driver vfs)
    local image="$ADDR/admin/direct:latest"
    t0="$(now_ms)"
    TMPDIR="$root/tmp" CONTAINERS_REGISTRIES_CONF="$root/registries.conf" "${b[@]}" bud --quiet \
        --isolation chroot --tls-verify=false --build-arg "BASE=$BASE" --build-arg GREETING=hello \
        -t "$image" fixtures/builds/sample >"$root/bud.log" 2>&1 ||
        { cat "$root/bud.log" >&2; rm -rf "$root"; return 1; }
    t1="$(now_ms)"
    TMPDIR="$root/tmp" CONTAINERS_REGISTRIES_CONF="$root/registries.conf" "${b[@]}" push --quiet \
        --tls-verify=false --creds "\$token:$TOKEN" "$image" "docker://$image" >"$root/push.log" 2>&1 ||
        { cat "$root/push.log" >&2; rm -rf "$root"; return 1; }
    t2="$(now_ms)"
    "${b[@]}" rm --all >/dev/null 2>&1 || true
    rm -rf "$root"
    jq -nc --argjson a "$t0" --argjson b "$t1" --argjson c "$t2" \
        '{bud_s: (($b - $a) / 1000), push_s: (($c - $b) / 1000), total_s: (($c - $a) / 1000)}' \
        >>"$WORK/buildah.jsonl"
    echo "bench-build: buildah run $i: $(tail -1 "$WORK/buildah.jsonl")"
}

run_e2e() {
    local dir="$WORK/e2e" port password i
    port="$(free_port "${BENCH_PORT:-5201}")"
    ADDR="127.0.0.1:$port" URL="http://127.0.0.1:$port"
    mkdir -p "$dir"
    # No BUILD_MANAGER section: the embedded defaults (gRPC moved to a free port below).
    cat >"$dir/config.yaml" <<EOF
SERVER_HOSTNAME: $ADDR
LISTEN_ADDR: $ADDR
DATA_DIR: $dir/data
SUPER_USERS: [admin]
FEATURE_BUILD_SUPPORT: true
EOF
    password="$(head -c 18 /dev/urandom | base64 | tr -d '/+=')"
    REGISTRY_ADMIN_PASSWORD="$password" "$BIN" --config "$dir/config.yaml" \
        admin user create admin --email admin@localhost >/dev/null
    TOKEN="$("$BIN" --config "$dir/config.yaml" admin token create admin bench)"
    "$BIN" --config "$dir/config.yaml" admin repo create admin/busybox --public >/dev/null
    "$BIN" --config "$dir/config.yaml" admin repo create admin/sample >/dev/null
    "$BIN" --config "$dir/config.yaml" admin repo create admin/direct >/dev/null
    # curl reads the Authorization header from a file, so the token never appears on argv.
    HDR="$dir/.api-header"
    (umask 077 && printf 'Authorization: Bearer %s\n' "$TOKEN" >"$HDR")

    echo "bench-build: buildman serve on $ADDR ($dir)"
    "$BIN" --config "$dir/config.yaml" serve --grpc-listen 127.0.0.1:0 >"$dir/server.log" 2>&1 &
    SERVER_PID=$!
    local code
    for i in $(seq 300); do
        kill -0 "$SERVER_PID" 2>/dev/null || { tail -20 "$dir/server.log" >&2; die "buildman exited"; }
        code="$(curl -s -o /dev/null -w '%{http_code}' "$URL/v2/" || true)"
        [[ "$code" == 200 || "$code" == 401 ]] && break
        ((i < 300)) || die "buildman did not answer on $URL/v2/ within 30 s"
        sleep 0.1
    done

    BASE="$ADDR/admin/busybox:latest"
    scripts/make-base-image.sh "$BASE" --creds "\$token:$TOKEN" >/dev/null
    tar -C fixtures/builds/sample -czf "$WORK/sample.tar.gz" .
    for i in $(seq "$RUNS"); do quarry_run "$i"; done
    for i in $(seq "$RUNS"); do buildah_run "$i"; done
    stop_server
}

# ---------------------------------------------------------------------------------------------
# scheduler: simulated agents

run_scheduler() {
    local n need hard rc=0
    for n in "${SIZES[@]}"; do
        # Each simulated agent holds one connection, and the server one: 2 descriptors per build.
        need=$((2 * n + 256))
        if (($(ulimit -n) < need)); then
            hard="$(ulimit -Hn)"
            if [[ "$hard" == unlimited ]] || ((hard >= need)); then ulimit -n "$need"; fi
            (($(ulimit -n) >= need)) ||
                echo "bench-build: warning: open-file limit $(ulimit -n) < $need needed for $n builds" >&2
        fi
        echo "bench-build: scheduler with $n builds"
        # A failed size is kept in the table (its JSON says what did not complete).
        if ! "$SCHED" --builds "$n" "${SCHED_EXTRA[@]}" >"$WORK/sched-$n.json" 2>"$WORK/sched-$n.log"; then
            echo "bench-build: scheduler run with $n builds failed; its log ends:" >&2
            tail -20 "$WORK/sched-$n.log" >&2
            rc=1
        fi
    done
    return "$rc"
}

# ---------------------------------------------------------------------------------------------

echo "bench-build: $(nproc) cpus, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg), mode $( ((QUICK)) && echo quick || echo full), work dir $WORK"
failed=()
for part in e2e scheduler; do
    want "$part" || continue
    # The subshell keeps errexit on inside run_* (it would be off in an `if`); its EXIT trap stops
    # the server it started, whatever happens. A failed part is reported; the other still runs.
    set +e
    (set -e; trap stop_server EXIT; "run_$part")
    rc=$?
    set -e
    ((rc == 0)) || failed+=("$part")
done

if want e2e; then
    echo
    echo "e2e: fixtures/builds/sample, $RUNS runs each, one at a time"
    jq -n -r \
        --slurpfile q <(cat "$WORK/quarry.jsonl" 2>/dev/null || true) \
        --slurpfile b <(cat "$WORK/buildah.jsonl" 2>/dev/null || true) '
        def pct($p): sort | if length == 0 then null else .[((($p / 100) * length) | ceil) - 1] end;
        def fig: if . == null then "-" else (. * 100 | round / 100 | tostring) end;
        def row($name; $v): [$name, ($v | pct(50) | fig), ($v | pct(95) | fig)] | @tsv;
        (["figure", "median", "p95"] | @tsv),
        row("quarry: POST -> build-scheduled (ms)"; [$q[].scheduled_ms]),
        row("quarry: POST -> registered (ms)"; [$q[].registered_ms]),
        row("quarry: POST -> complete (s)"; [$q[].complete_s]),
        row("buildah: bud (s)"; [$b[].bud_s]),
        row("buildah: push (s)"; [$b[].push_s]),
        row("buildah: bud + push (s)"; [$b[].total_s]),
        (([$q[].complete_s] | pct(50)) as $qm | ([$b[].total_s] | pct(50)) as $bm
         | ([$q[].complete_s] | pct(95)) as $qp | ([$b[].total_s] | pct(95)) as $bp
         | ["overhead quarry / buildah (x)",
            (if $qm == null or $bm == null then null else $qm / $bm end | fig),
            (if $qp == null or $bp == null then null else $qp / $bp end | fig)] | @tsv),
        (["runs needing a retry (quarry)", ([$q[] | select(.attempts > 1)] | length | tostring), ""]
         | @tsv)
    ' | awk -F '\t' '{ printf "%-42s %10s %10s\n", $1, $2, $3 }'
fi

if want scheduler; then
    echo
    echo "scheduler: simulated agents, ALLOWED_WORKER_COUNT = builds, in-process orchestrator"
    files=()
    for n in "${SIZES[@]}"; do files+=("$WORK/sched-$n.json"); done
    # A size whose run printed nothing shows as "-".
    for f in "${files[@]}"; do [[ -s "$f" ]] || echo null >"$f"; done
    jq -s -r --argjson sizes "$(printf '%s\n' "${SIZES[@]}" | jq -s .)" '
        . as $runs
        | def fig: if . == null then "-" elif type == "number" then (. * 100 | round / 100 | tostring)
              else . end;
          def row($name; f): [$name] + [$runs[] | if . == null then "-" else (f | fig) end] | @tsv;
          def call($c; $title): row("\($title) p50/p95/p99 ms";
              .calls[$c] | if . == null then null
              else "\(.p50_ms | fig)/\(.p95_ms | fig)/\(.p99_ms | fig)" end);
        (["builds (= concurrency)"] + [$sizes[] | tostring] | @tsv),
        row("builds complete"; .complete),
        row("builds retried or failed"; (.builds - .complete) + .retried),
        row("builds/s (queue -> all complete)"; .builds_per_s),
        row("queue -> all registered (s)"; .all_registered_s),
        row("queue -> all complete (s)"; .total_s),
        row("peak agents running at once"; .peak_running_agents),
        call("register"; "RegisterBuildJob"),
        call("set_phase"; "SetPhase"),
        call("log_message"; "LogMessage"),
        call("heartbeat"; "Heartbeat"),
        row("agent call errors"; [.calls[].errors] | add),
        row("peak RSS MiB (server + agents)"; .peak_rss_mib),
        row("CPU s (server + agents)"; .cpu_s),
        row("peak open descriptors"; .peak_fds),
        row("peak threads"; .peak_threads)
    ' "${files[@]}" | awk -F '\t' '{ printf "%-38s", $1; for (i = 2; i <= NF; i++) printf " %20s", $i; print "" }'
fi

if ((${#failed[@]} > 0)); then
    echo "bench-build: FAILED: ${failed[*]} (logs kept under $WORK)" >&2
    KEEP=1
    exit 1
fi
