#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh machine, then runs it.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
# The admin page test drives Debian's Chromium (never a downloaded browser build). Without
# it that test would fail, so stop here and say why instead of running a suite that must.
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing Debian's chromium for the admin page test" >&2
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -qq chromium; } >/dev/null; then
            echo "test.sh: could not install Debian's chromium (apt-get install chromium" \
                 "failed); the admin page browser test needs it" >&2
            exit 1
        fi
    else
        echo "test.sh: /usr/bin/chromium is missing and cannot be installed here (needs" \
             "root and apt-get); install Debian's chromium, the admin page browser test" \
             "needs it" >&2
        exit 1
    fi
fi
# The Redis store's tests run against Debian's redis-server; without it they fail.
if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing Debian's redis-server for the Redis store tests" >&2
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -qq --no-install-recommends redis-server; } >/dev/null; then
            echo "test.sh: could not install redis-server, which the tests need" >&2
            exit 1
        fi
    else
        echo "test.sh: redis-server is missing and cannot be installed here (needs root" \
             "and apt-get); install Debian's redis-server package, the tests need it" >&2
        exit 1
    fi
fi
# The external-worker tests publish their workers in a real DNS server, Debian's dnsmasq
# (the dnsmasq-base package: the program alone, with no system service to start).
if ! command -v dnsmasq >/dev/null 2>&1 && [ ! -x /usr/sbin/dnsmasq ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing Debian's dnsmasq-base for the external-worker tests" >&2
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -qq --no-install-recommends dnsmasq-base; } >/dev/null; then
            echo "test.sh: could not install dnsmasq-base, which the tests need" >&2
            exit 1
        fi
    else
        echo "test.sh: dnsmasq is missing and cannot be installed here (needs root and" \
             "apt-get); install Debian's dnsmasq-base package, the tests need it" >&2
        exit 1
    fi
fi
python3 -m ruff check holdover tests bench
# -rs: every skip is printed with its reason (docs/testing.md lists the allowed ones).
exec python3 -m pytest -q -rs -p no:cacheprovider "$@"
