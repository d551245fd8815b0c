#!/usr/bin/env bash
# Our own OCI conformance suite against a live registry-core on 127.0.0.1 (the upstream Go suite
# cannot be built here). Each test starts its own server, so this needs no running registry.
set -euo pipefail

case "${1:-}" in
    "") ;;
    -h|--help)
        cat <<'EOF_USAGE'
Usage: scripts/conformance.sh [--help]

Runs registry-core's conformance suite (tests/conformance.rs: pull, push, content discovery,
content management, auth) and crash-recovery tests (tests/crash.rs), each against a freshly
started registry-core binary on a free loopback port. scripts/test.sh runs the same tests in its
conformance+integration tier; this is the shortcut while working on the registry.
EOF_USAGE
        exit 0
        ;;
    *) echo "conformance: unknown argument: $1 (see --help)" >&2; exit 2 ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec cargo test --locked -p registry-core --test conformance --test crash
