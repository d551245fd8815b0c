#!/usr/bin/env bash
# The README's first command: build Quarry, run it on 127.0.0.1 with a first admin user on its
# embedded defaults (SQLite, filesystem blobs, in-process orchestrator, popen executor), run a real
# build of fixtures/builds/sample through it, and print how to pull the image. Safe to run again:
# it reuses the config, the admin password, the API token and a running server.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/quickstart.sh [--no-install] [--stop] [--help]

  1. installs missing system packages (scripts/install-deps.sh) unless --no-install;
  2. cargo build --release -p buildman -p builder-agent;
  3. writes $QUARRY_HOME/config.yaml if absent (SUPER_USERS: [admin], 127.0.0.1:$QUARRY_PORT, no
     BUILD_MANAGER section: the embedded single-machine defaults);
  4. creates the admin user "admin" with a generated password, kept in $QUARRY_HOME/admin-password
     (mode 600), and an API token kept in $QUARRY_HOME/api-token, so later runs reuse them;
  5. starts `buildman --config $QUARRY_HOME/config.yaml serve` in the background (pid file and
     log in $QUARRY_HOME), or reuses the one already running;
  6. pushes a busybox base image (scripts/make-base-image.sh: nothing comes from the internet),
     uploads fixtures/builds/sample as a .tar.gz, starts a build of admin/sample through the REST
     API, follows its phases and log lines, checks the pushed image with skopeo, and prints the
     pull command.

  --no-install  skip scripts/install-deps.sh
  --stop        stop the server this script started (and its build agents), then exit
  --help        show this help

Environment: QUARRY_HOME (default ${XDG_DATA_HOME:-~/.local/share}/quarry), QUARRY_PORT (default
5000; used only when config.yaml is written; agents dial gRPC on 127.0.0.1:50051),
CARGO_TARGET_DIR.
EOF
}

INSTALL=1 STOP=0
for arg in "$@"; do
    case "$arg" in
        --no-install) INSTALL=0 ;;
        --stop) STOP=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "quickstart: unknown argument: $arg (see --help)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
QUARRY_HOME="${QUARRY_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/quarry}"
CONFIG="$QUARRY_HOME/config.yaml"
PIDFILE="$QUARRY_HOME/buildman.pid"
LOG="$QUARRY_HOME/buildman.log"
PWFILE="$QUARRY_HOME/admin-password"
TOKENFILE="$QUARRY_HOME/api-token"
TARGET="${CARGO_TARGET_DIR:-target}"
[[ "$TARGET" == /* ]] || TARGET="$PWD/$TARGET" # printed below, so make it absolute
BIN="$TARGET/release/buildman"

say() { echo "quickstart: $*"; }
die() { echo "quickstart: $*" >&2; exit 1; }

# The pid in pid file $1 if that process still runs a binary named $2, else nothing.
running_pid() {
    local pid
    [[ -f "$1" ]] || return 0
    pid="$(<"$1")"
    if [[ "$pid" =~ ^[0-9]+$ ]] && [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == */"$2"* ]]; then
        echo "$pid"
    fi
}

# SIGTERM, then wait up to 15 s (buildman stops its build agents before it exits).
stop_pid() {
    kill "$1"
    for _ in $(seq 150); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
}

if ((STOP)); then
    pid="$(running_pid "$PIDFILE" buildman)"
    if [[ -z "$pid" ]]; then
        say "no buildman started by this script is running"
    else
        stop_pid "$pid"
        say "stopped buildman (pid $pid) and its build agents"
    fi
    rm -f "$PIDFILE"
    exit 0
fi

if ((INSTALL)); then
    scripts/install-deps.sh
fi

say "building buildman and builder-agent (release)"
cargo build --release --locked -p buildman -p builder-agent --bins

mkdir -p "$QUARRY_HOME"
chmod 700 "$QUARRY_HOME"
if [[ ! -f "$CONFIG" ]]; then
    port="${QUARRY_PORT:-5000}"
    cat >"$CONFIG" <<EOF
# Written by scripts/quickstart.sh; see buildman/README.md and registry-core/README.md for every
# key. Without a BUILD_MANAGER section buildman uses its embedded single-machine defaults.
SERVER_HOSTNAME: 127.0.0.1:$port
LISTEN_ADDR: 127.0.0.1:$port
DATA_DIR: $QUARRY_HOME/registry
SUPER_USERS: [admin]
FEATURE_BUILD_SUPPORT: true
EOF
    say "wrote $CONFIG"
fi
"$BIN" --config "$CONFIG" check-config || die "$CONFIG is invalid (see above)"
# Clients use SERVER_HOSTNAME (the token realm points there), so that is the address we use too.
ADDR="$(sed -n 's/^SERVER_HOSTNAME: *//p' "$CONFIG" | tr -d "\"' ")"
[[ -n "$ADDR" ]] || die "$CONFIG has no SERVER_HOSTNAME line"
if [[ -n "${QUARRY_PORT:-}" && "$ADDR" != *":$QUARRY_PORT" ]]; then
    say "note: $CONFIG already uses $ADDR; QUARRY_PORT=$QUARRY_PORT is ignored (edit or remove the file)"
fi

# The first admin user. The password file is written only once the user exists, so a run that
# failed half-way is simply repeated.
if [[ ! -s "$PWFILE" ]]; then
    password="$(head -c 18 /dev/urandom | base64 | tr -d '/+=')"
    if ! REGISTRY_ADMIN_PASSWORD="$password" "$BIN" --config "$CONFIG" \
        admin user create admin --email admin@localhost; then
        die "could not create the admin user; if it exists from an earlier run whose $PWFILE is gone, remove $QUARRY_HOME to start over"
    fi
    (umask 077 && printf '%s\n' "$password" >"$PWFILE")
    say "created user admin (password in $PWFILE)"
fi
# An API token for the REST calls below, kept like the password.
if [[ ! -s "$TOKENFILE" ]]; then
    token="$("$BIN" --config "$CONFIG" admin token create admin quickstart)"
    (umask 077 && printf '%s\n' "$token" >"$TOKENFILE")
fi
TOKEN="$(<"$TOKENFILE")"

# A registry-core started by the previous version of this script holds the port: stop it.
old="$(running_pid "$QUARRY_HOME/registry-core.pid" registry-core)"
if [[ -n "$old" ]]; then
    stop_pid "$old"
    rm -f "$QUARRY_HOME/registry-core.pid"
    say "stopped the registry-core an earlier quickstart started (pid $old): buildman serves the registry now"
fi
pid="$(running_pid "$PIDFILE" buildman)"
if [[ -n "$pid" ]]; then
    say "reusing buildman already running (pid $pid)"
else
    if (exec 3<>"/dev/tcp/${ADDR%:*}/${ADDR##*:}") 2>/dev/null; then
        die "something else listens on $ADDR; stop it or choose another port: QUARRY_PORT=5001 after removing $CONFIG"
    fi
    # setsid: the server outlives this script and the terminal; stop it with --stop.
    setsid "$BIN" --config "$CONFIG" serve </dev/null >>"$LOG" 2>&1 &
    pid=$!
    echo "$pid" >"$PIDFILE"
    say "started buildman (pid $pid, log $LOG)"
fi
for i in $(seq 300); do
    code="$(curl -s -o /dev/null -w '%{http_code}' "http://$ADDR/v2/" || true)"
    [[ "$code" == 401 || "$code" == 200 ]] && break
    kill -0 "$pid" 2>/dev/null || { tail -20 "$LOG" >&2; die "buildman exited; log above"; }
    ((i < 300)) || die "buildman did not answer on http://$ADDR/v2/ within 30 s (log: $LOG)"
    sleep 0.1
done

# curl reads the Authorization header from a file, so the token never appears on a command line.
HDR="$QUARRY_HOME/.api-header"
(umask 077 && printf 'Authorization: Bearer %s\n' "$TOKEN" >"$HDR")
api() { curl -fsS -H "@$HDR" -H 'Content-Type: application/json' "$@"; }
api -o /dev/null "http://$ADDR/api/v1/user/" ||
    die "the API token in $TOKENFILE is refused; remove $QUARRY_HOME to start over"
# The same token for buildah and skopeo, through an auth file rather than --creds.
AUTHFILE="$QUARRY_HOME/auth.json"
# jq reads the token from its file, so it is never an argument either.
(umask 077 && jq -n --arg a "$ADDR" --rawfile t "$TOKENFILE" \
    '{auths: {($a): {auth: ("$token:" + ($t | rtrimstr("\n")) | @base64)}}}' >"$AUTHFILE")

# The base image: busybox from the Debian package, since nothing can be pulled from the internet.
BASE="$ADDR/admin/busybox:latest"
"$BIN" --config "$CONFIG" admin repo create admin/busybox --public >/dev/null 2>&1 || true
"$BIN" --config "$CONFIG" admin repo create admin/sample >/dev/null 2>&1 || true
say "pushing the base image $BASE"
scripts/make-base-image.sh "$BASE" --authfile "$AUTHFILE" >/dev/null

say "uploading fixtures/builds/sample and starting a build of $ADDR/admin/sample"
drop="$(api -X POST -d '{"mimeType": "application/gzip"}' "http://$ADDR/api/v1/filedrop/")"
file_id="$(jq -r .file_id <<<"$drop")"
tar -C fixtures/builds/sample -czf - . |
    curl -fsS -H "@$HDR" -X PUT --data-binary @- "$(jq -r .url <<<"$drop")" >/dev/null
request="$(jq -n --arg f "$file_id" --arg b "$BASE" \
    '{file_id: $f, docker_tags: ["latest"], build_args: {BASE: $b, GREETING: "hello"}}')"
uuid="$(api -X POST -d "$request" "http://$ADDR/api/v1/repository/admin/sample/build/" | jq -r .id)"
say "build $uuid queued; following it:"

# Follow the build: print each new log entry, stop at a final phase.
seen=0 phase=""
deadline=$((SECONDS + 900))
while :; do
    # The phase first, then the log: the last lines of a finished build are printed too.
    phase="$(api "http://$ADDR/api/v1/repository/admin/sample/build/$uuid/status" | jq -r .phase)"
    logs="$(api "http://$ADDR/api/v1/repository/admin/sample/build/$uuid/logs?start=$seen")"
    jq -r '.logs[] | if .type == "phase" then "  == \(.message) ==" else "  | \(.message)" end' <<<"$logs"
    seen=$(($(jq -r '.start' <<<"$logs") + $(jq -r '.logs | length' <<<"$logs")))
    case "$phase" in complete | error | expired | cancelled) break ;; esac
    ((SECONDS < deadline)) || die "build $uuid still $phase after 15 minutes (server log: $LOG)"
    sleep 1
done
view="$(api "http://$ADDR/api/v1/repository/admin/sample/build/$uuid")"
if [[ "$phase" != complete ]]; then
    die "build $uuid ended $phase: $(jq -r '.error // "no reason recorded"' <<<"$view") (server log: $LOG)"
fi
IMAGE="$ADDR/admin/sample:latest"
built="$(jq -r '.manifest_digests[0]' <<<"$view")"
served="$(skopeo inspect --tls-verify=false --authfile "$AUTHFILE" "docker://$IMAGE" | jq -r .Digest)"
[[ "$served" == "$built" ]] || die "the build reported $built but the registry serves $served"
say "built and pushed $IMAGE ($built)"

cat <<EOF

Quarry is running at http://$ADDR (pid $pid): registry, REST API and build manager in one process.
  data and config: $QUARRY_HOME   log: $LOG

Admin user:  admin     password in $PWFILE, API token in $TOKENFILE

Pull the image you just built:
  podman login --tls-verify=false -u admin $ADDR
  podman pull --tls-verify=false $IMAGE

Build again: POST a .tar.gz to /api/v1/filedrop/ (or give an archive_url or a git url and sha),
then POST /api/v1/repository/admin/sample/build/ as above (README.md, "Builds").

More accounts, organisations, robots and permissions:
  $BIN --config $CONFIG admin --help

Builds here run in a local agent process (executor popen): fine for Dockerfiles you trust. To run
each build in its own throw-away VM, see README.md, "Builds in VMs".

Stop the server and any running build agents:
  scripts/quickstart.sh --stop        (or: kill \$(cat $PIDFILE))
EOF
