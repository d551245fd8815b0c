# shellcheck shell=bash
# Argument checks shared by the scripts' option loops; sourced, never run. Each caller sets
# PROG (the name its messages start with) before sourcing this file.

# usage_error MESSAGE: print "PROG: MESSAGE" to stderr and exit 2 (a usage error).
usage_error() {
    echo "$PROG: $1" >&2
    exit 2
}

# need_one_of OPTION VALUE CHOICE...: VALUE is one of the CHOICEs, else a usage error naming
# OPTION and the choices. An empty VALUE (the option was given last, with no value) never is.
need_one_of() {
    local option="$1" value="$2" choice
    shift 2
    for choice in "$@"; do
        [[ -n "$value" && "$value" == "$choice" ]] && return 0
    done
    usage_error "$option needs one of: $*"
}

# unknown_argument ARG: the usage error for an option the script does not know.
unknown_argument() {
    usage_error "unknown argument: $1 (see --help)"
}
