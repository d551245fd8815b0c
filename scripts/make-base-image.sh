#!/usr/bin/env bash
# Build a tiny base image (busybox-static only) locally and push it to a registry over plain HTTP.
# Tests and the quickstart use it: this machine cannot pull images from the internet.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/make-base-image.sh REGISTRY_HOST:PORT/NAMESPACE/REPO:TAG
                                  [--creds USER:SECRET | --authfile FILE]

Builds an image from scratch holding /bin/busybox (from the busybox-static package) and its
applet links (/bin/sh, /bin/echo, ...), with PATH=/bin and CMD ["/bin/sh"], then pushes it to
the given reference with --tls-verify=false. Storage is vfs under a private temporary root, so
the host's container storage is not touched; the temporary root is removed on exit.

  --creds USER:SECRET   registry credentials (a password or an access token); visible to other
                        local users in the process list while the push runs
  --authfile FILE       registry credentials from a containers auth.json (kept off the command line)
  --help                show this help

Prints the pushed manifest digest (sha256:...) on stdout.
Needs: buildah, busybox-static (/bin/busybox).
EOF
}

ref=""
creds=""
authfile=""
while (($# > 0)); do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --creds)
            [[ $# -ge 2 ]] || { echo "make-base-image: --creds needs USER:SECRET" >&2; exit 2; }
            creds="$2"
            shift
            ;;
        --authfile)
            [[ $# -ge 2 ]] || { echo "make-base-image: --authfile needs a FILE" >&2; exit 2; }
            authfile="$2"
            shift
            ;;
        -*) echo "make-base-image: unknown option $1 (see --help)" >&2; exit 2 ;;
        *)
            [[ -z "$ref" ]] || { echo "make-base-image: one image reference only" >&2; exit 2; }
            ref="$1"
            ;;
    esac
    shift
done
[[ -n "$ref" ]] || { usage >&2; exit 2; }
[[ "$ref" == */*:* ]] || {
    echo "make-base-image: expected REGISTRY_HOST:PORT/NAMESPACE/REPO:TAG, got $ref" >&2
    exit 2
}

busybox=/bin/busybox
command -v buildah >/dev/null || { echo "make-base-image: buildah is not installed" >&2; exit 1; }
[[ -x "$busybox" ]] || { echo "make-base-image: $busybox missing (install busybox-static)" >&2; exit 1; }
# A dynamically linked busybox would need its libraries in the image too.
if command -v file >/dev/null && ! file -L "$busybox" | grep -q 'statically linked'; then
    echo "make-base-image: $busybox is not statically linked (install busybox-static)" >&2
    exit 1
fi

# Short path: podman/buildah refuse a run root longer than 50 characters.
tmp="$(mktemp -d /tmp/qbase.XXXXXX)"
cleanup() {
    if [[ -n "${ctr:-}" ]]; then
        "${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

mkdir -p "$tmp/rootfs/bin" "$tmp/tmp"
printf 'unqualified-search-registries = []\n' >"$tmp/registries.conf"
export TMPDIR="$tmp/tmp"
export CONTAINERS_REGISTRIES_CONF="$tmp/registries.conf"
BUILDAH=(buildah --root "$tmp/root" --runroot "$tmp/run" --storage-driver vfs)

cp "$busybox" "$tmp/rootfs/bin/busybox"
while read -r applet; do
    [[ "$applet" == busybox || -z "$applet" ]] && continue
    ln -s busybox "$tmp/rootfs/bin/$applet"
done < <("$busybox" --list)

ctr="$("${BUILDAH[@]}" from --quiet scratch)"
"${BUILDAH[@]}" copy --quiet "$ctr" "$tmp/rootfs" / >/dev/null
"${BUILDAH[@]}" config --env PATH=/bin --cmd /bin/sh "$ctr"
"${BUILDAH[@]}" commit --quiet "$ctr" "$ref" >/dev/null

push=("${BUILDAH[@]}" push --quiet --tls-verify=false --digestfile "$tmp/digest")
[[ -z "$creds" ]] || push+=(--creds "$creds")
[[ -z "$authfile" ]] || push+=(--authfile "$authfile")
"${push[@]}" "$ref" "docker://$ref"
cat "$tmp/digest"
echo
