#!/usr/bin/env bash
# The README's first command: build registry-core, run it on 127.0.0.1 with a first admin user,
# and show a real push and pull with buildah, skopeo and podman. Safe to run again: it reuses the
# config, the admin password and a running server.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/quickstart.sh [--no-install] [--stop] [--help]

  1. installs missing system packages (scripts/install-deps.sh) unless --no-install;
  2. cargo build --release -p registry-core;
  3. writes $QUARRY_HOME/config.yaml if absent (SUPER_USERS: [admin], 127.0.0.1:$QUARRY_PORT);
  4. creates the admin user "admin" with a generated password, kept in $QUARRY_HOME/admin-password
     (mode 600) so that later runs reuse it;
  5. starts `registry-core --config $QUARRY_HOME/config.yaml serve` in the background (pid file and
     log in $QUARRY_HOME), or reuses the one already running;
  6. builds a one-file image with buildah (from scratch, isolated vfs storage under $QUARRY_HOME),
     pushes it to 127.0.0.1:$QUARRY_PORT/admin/hello:latest, reads it back with skopeo inspect
     and podman pull, and prints the credentials and the commands to use next.

  --no-install  skip scripts/install-deps.sh
  --stop        stop the server this script started, then exit
  --help        show this help

Environment: QUARRY_HOME (default ${XDG_DATA_HOME:-~/.local/share}/quarry), QUARRY_PORT (default
5000; used only when config.yaml is written), CARGO_TARGET_DIR.
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
PIDFILE="$QUARRY_HOME/registry-core.pid"
LOG="$QUARRY_HOME/registry-core.log"
PWFILE="$QUARRY_HOME/admin-password"
CLIENT="$QUARRY_HOME/clients" # buildah/podman storage and the registry auth file of this demo
TARGET="${CARGO_TARGET_DIR:-target}"
[[ "$TARGET" == /* ]] || TARGET="$PWD/$TARGET" # printed below, so make it absolute
BIN="$TARGET/release/registry-core"

say() { echo "quickstart: $*"; }
die() { echo "quickstart: $*" >&2; exit 1; }

# The pid in $PIDFILE if that process is still a registry-core, else nothing.
running_pid() {
    local pid
    [[ -f "$PIDFILE" ]] || return 0
    pid="$(<"$PIDFILE")"
    if [[ "$pid" =~ ^[0-9]+$ ]] && [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == */registry-core* ]]; then
        echo "$pid"
    fi
}

if ((STOP)); then
    pid="$(running_pid)"
    if [[ -z "$pid" ]]; then
        say "no registry-core started by this script is running"
    else
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        say "stopped registry-core (pid $pid)"
    fi
    rm -f "$PIDFILE"
    exit 0
fi

if ((INSTALL)); then
    scripts/install-deps.sh
fi

say "building registry-core (release)"
cargo build --release --locked -p registry-core --bin registry-core

mkdir -p "$QUARRY_HOME" "$CLIENT"
chmod 700 "$QUARRY_HOME"
if [[ ! -f "$CONFIG" ]]; then
    port="${QUARRY_PORT:-5000}"
    cat >"$CONFIG" <<EOF
# Written by scripts/quickstart.sh; see registry-core/README.md for every key.
SERVER_HOSTNAME: 127.0.0.1:$port
LISTEN_ADDR: 127.0.0.1:$port
DATA_DIR: $QUARRY_HOME/registry
SUPER_USERS: [admin]
EOF
    say "wrote $CONFIG"
fi
"$BIN" --config "$CONFIG" check-config >/dev/null || die "$CONFIG is invalid (see above)"
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
PASSWORD="$(<"$PWFILE")"

pid="$(running_pid)"
if [[ -n "$pid" ]]; then
    say "reusing registry-core already running (pid $pid)"
else
    if (exec 3<>"/dev/tcp/${ADDR%:*}/${ADDR##*:}") 2>/dev/null; then
        die "something else listens on $ADDR; stop it or choose another port: QUARRY_PORT=5001 after removing $CONFIG"
    fi
    # setsid: the server outlives this script and the terminal; stop it with --stop.
    setsid "$BIN" --config "$CONFIG" serve </dev/null >>"$LOG" 2>&1 &
    pid=$!
    echo "$pid" >"$PIDFILE"
    say "started registry-core (pid $pid, log $LOG)"
fi
for i in $(seq 300); do
    code="$(curl -s -o /dev/null -w '%{http_code}' "http://$ADDR/v2/" || true)"
    [[ "$code" == 401 || "$code" == 200 ]] && break
    kill -0 "$pid" 2>/dev/null || { tail -20 "$LOG" >&2; die "registry-core exited; log above"; }
    ((i < 300)) || die "registry-core did not answer on http://$ADDR/v2/ within 30 s (log: $LOG)"
    sleep 0.1
done
curl -fsS -o /dev/null -u "admin:$PASSWORD" \
    "http://$ADDR/v2/auth?service=$ADDR&scope=repository:admin/hello:pull,push" ||
    die "the password in $PWFILE is refused by the registry; remove $QUARRY_HOME to start over"

# A tiny image, built offline: one static file in an empty (scratch) image. Every client keeps its
# state under $CLIENT (vfs storage, no system store touched) and reads the password from an auth
# file written by `login --password-stdin`, so it never appears on a command line.
AUTH=(--authfile "$CLIENT/auth.json")
BUILDAH=(buildah --root "$CLIENT/buildah/root" --runroot "$CLIENT/buildah/run" --storage-driver vfs)
PODMAN=(podman --root "$CLIENT/podman/root" --runroot "$CLIENT/podman/run" --storage-driver vfs)
IMAGE="$ADDR/admin/hello:latest"
[[ -s "$CLIENT/auth.json" ]] || (umask 077 && echo '{}' >"$CLIENT/auth.json")
printf '%s\n' "$PASSWORD" | buildah login --tls-verify=false "${AUTH[@]}" -u admin --password-stdin "$ADDR" >/dev/null

say "building a one-file image with buildah"
printf 'hello from quarry\n' >"$CLIENT/hello.txt"
ctr="$("${BUILDAH[@]}" from scratch)"
"${BUILDAH[@]}" copy "$ctr" "$CLIENT/hello.txt" /hello.txt >/dev/null
"${BUILDAH[@]}" config --label org.opencontainers.image.title=quarry-hello "$ctr"
"${BUILDAH[@]}" commit --quiet --rm "$ctr" localhost/quarry-hello:latest >/dev/null

say "pushing $IMAGE with buildah"
"${BUILDAH[@]}" push --quiet --tls-verify=false "${AUTH[@]}" localhost/quarry-hello:latest "docker://$IMAGE"

say "reading it back with skopeo inspect"
pushed="$(skopeo inspect --tls-verify=false "${AUTH[@]}" "docker://$IMAGE" | jq -r .Digest)"
say "  $IMAGE is $pushed"

say "pulling it with podman (isolated storage)"
"${PODMAN[@]}" pull --quiet --tls-verify=false "${AUTH[@]}" "$IMAGE" >/dev/null
pulled="$("${PODMAN[@]}" image inspect --format '{{.Digest}}' "$IMAGE")"
[[ "$pulled" == "$pushed" ]] || die "podman pulled $pulled, but the registry serves $pushed"
say "  podman has $IMAGE at $pulled"

cat <<EOF

Quarry's registry is running at http://$ADDR (pid $pid).
  data and config: $QUARRY_HOME   log: $LOG

Admin user:  admin
Password:    $PASSWORD   (kept in $PWFILE)

Use it with your own podman:
  podman login --tls-verify=false -u admin $ADDR
  podman pull --tls-verify=false $IMAGE
  podman push --tls-verify=false <image> $ADDR/admin/<name>:<tag>

More accounts, organisations, robots and permissions:
  $BIN --config $CONFIG admin --help

Stop the server:
  scripts/quickstart.sh --stop        (or: kill \$(cat $PIDFILE))
EOF
