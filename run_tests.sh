#!/usr/bin/env bash
# run_tests.sh - install everything the test suite needs, then run it.
#
# Usage: ./run_tests.sh [pytest args...]
# Installs (idempotently): the Debian packages that make and hold test speech (espeak-ng, sox,
# pocketsphinx-testdata, asterisk-core-sounds-*, shellcheck, chromium) and the container test's tools (podman, runc, mmdebstrap,
# docker-compose, podman-compose), nginx and redis-server when run as root and they are missing; .venv with requirements-dev.txt;
# the bundled model. Then runs pytest on the whole suite with the real bundled model
# (./run_tests.sh -m "not container" leaves out the container image test).
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"

needs_system=0
for tool in espeak-ng sox shellcheck chromium podman runc mmdebstrap docker-compose podman-compose; do
    command -v "$tool" >/dev/null 2>&1 || needs_system=1
done
[ -d /usr/share/pocketsphinx/test/data/librivox ] || needs_system=1
# podman's CNI plugin that lets compose services find each other by name (the container test)
[ -x /usr/lib/cni/dnsname ] || needs_system=1
# nginx (the load-balancer test) lives in /usr/sbin, which a normal user's PATH may lack
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || needs_system=1
# redis-server: the shared-state tests start their own on a free port
command -v redis-server >/dev/null 2>&1 || needs_system=1
# multilingual speech (Asterisk prompts + transcripts) and music on hold
for lang in en es fr it ru; do
    [ -f "/usr/share/doc/asterisk-core-sounds-$lang/core-sounds-$lang.txt.gz" ] || needs_system=1
    compgen -G "/usr/share/asterisk/sounds/${lang}_*/agent-pass.wav" >/dev/null || needs_system=1
done
[ -d /usr/share/asterisk/moh ] || needs_system=1

install_args=(--dev)
if [ "$needs_system" -eq 1 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        install_args+=(--system-deps)
    else
        echo "warning: espeak-ng / sox / shellcheck / chromium / pocketsphinx-testdata / podman / mmdebstrap" \
             "(or another test tool) are missing and cannot be" \
             "installed here (needs root and apt-get); tests that need them will be skipped." >&2
    fi
fi

./install.sh "${install_args[@]}"
exec .venv/bin/python -m pytest "$@"
