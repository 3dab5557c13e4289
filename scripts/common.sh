# Shared set-up for scripts/serve and scripts/test: build prerequisites and cargo's cache dir.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Keep build output outside the clone so fresh clones on one machine build incrementally.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/org-gateway/target}"

apt_install() { # package names...
    echo "==> installing $* (Debian packages)" >&2
    local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# cmake builds pingora's C dependencies.
ensure_cmake() {
    command -v cmake >/dev/null 2>&1 || apt_install cmake
}

# redis-server backs the tests of fleet-wide rate limits (limits.store = "redis").
ensure_redis() {
    command -v redis-server >/dev/null 2>&1 || apt_install redis-server
}

# promtool validates the metrics exposition, alert rules and dashboards in the test suite.
ensure_promtool() {
    command -v promtool >/dev/null 2>&1 || apt_install prometheus
}
