#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh machine, then runs it.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
# The admin page test drives Debian's Chromium (never a downloaded browser build).
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing Debian's chromium for the admin page test" >&2
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -qq chromium; } >/dev/null; then
            echo "test.sh: could not install chromium; the admin page browser test" \
                 "will be skipped" >&2
        fi
    else
        echo "test.sh: /usr/bin/chromium is missing and cannot be installed here (needs" \
             "root and apt-get); the admin page browser test will be skipped" >&2
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
python3 -m ruff check holdover tests bench
exec python3 -m pytest -q -p no:cacheprovider "$@"
