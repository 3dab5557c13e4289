# Shared set-up for scripts/serve and scripts/test: build prerequisites and cargo's cache dir.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Keep build output outside the clone so fresh clones on one machine build incrementally.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/org-gateway/target}"

ensure_cmake() {
    if command -v cmake >/dev/null 2>&1; then return; fi
    echo "==> installing cmake (needed to build pingora)" >&2
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >/dev/null
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >/dev/null
    fi
}
