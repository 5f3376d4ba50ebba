#!/usr/bin/env bash
# Soak: the proxy under steady load for several minutes while its backend is
# killed and restarted twice; no idempotent request may fail and RSS must
# stay flat. Usage: scripts/soak-proxy.sh [SECONDS]   (default 300)
set -euo pipefail
cd "$(dirname "$0")/.."
TIMEWAIT_SOAK_SECS="${1:-300}" cargo test --release --test tests proxy::soak -- --nocapture
