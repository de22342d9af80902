#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh machine, then runs it.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
# Debian packages the tests drive for real: Chromium for the browser tests (never a
# downloaded browser build), redis-server for the Redis store, dnsmasq (dnsmasq-base: the
# program alone, no service) for the external-worker DNS tests, zsh for the completion
# script, systemd-analyze for the systemd unit in docs/operating.md, ss and ip (iproute2)
# for the listening sockets of several proxy processes and the network namespaces of the
# partition test. Without one of them its tests would
# fail, so stop here and say why instead.
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || missing+=(dnsmasq-base)
command -v zsh >/dev/null 2>&1 || missing+=(zsh)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
{ command -v ss && command -v ip; } >/dev/null 2>&1 || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing Debian's ${missing[*]} for the tests" >&2
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >/dev/null
        then
            echo "test.sh: could not install ${missing[*]} (apt-get install failed); the" \
                 "tests need them" >&2
            exit 1
        fi
    else
        echo "test.sh: ${missing[*]} missing and cannot be installed here (needs root and" \
             "apt-get); install Debian's ${missing[*]}, the tests need them" >&2
        exit 1
    fi
fi
python3 -m ruff check holdover tests bench scripts
# -rs: every skip is printed with its reason (docs/testing.md lists the allowed ones).
exec python3 -m pytest -q -rs -p no:cacheprovider "$@"
