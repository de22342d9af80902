#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh machine, then runs it.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
# Debian packages the tests drive for real: Chromium for the browser tests (never a
# downloaded browser build), redis-server for the Redis store, zsh for the completion
# script. Without one of them its tests would fail, so stop here and say why instead.
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v zsh >/dev/null 2>&1 || missing+=(zsh)
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
# The docs test checks the systemd unit of docs/operating.md with systemd-analyze.
if ! command -v systemd-analyze >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing Debian's systemd for systemd-analyze (docs test)" >&2
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -qq --no-install-recommends systemd; } >/dev/null; then
            echo "test.sh: could not install systemd; the systemd unit docs test needs" \
                 "systemd-analyze" >&2
        fi
    else
        echo "test.sh: systemd-analyze is missing and cannot be installed here (needs root" \
             "and apt-get); the systemd unit docs test needs it" >&2
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
python3 -m ruff check holdover tests bench scripts
# -rs: every skip is printed with its reason (docs/testing.md lists the allowed ones).
exec python3 -m pytest -q -rs -p no:cacheprovider "$@"
