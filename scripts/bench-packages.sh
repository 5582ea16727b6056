# Sourced by the bench scripts (from the repository root): installs the Debian packages a
# bench needs, updating the package lists only when a first try fails.
# Usage: . scripts/bench-packages.sh; install_packages nginx wrk ...

install_packages() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! $sudo apt-get install -y --no-install-recommends "$@"; then
        $sudo apt-get update
        $sudo apt-get install -y --no-install-recommends "$@"
    fi
}
