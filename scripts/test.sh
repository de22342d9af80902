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
python3 -m ruff check holdover tests bench
# -rs: every skip is printed with its reason (docs/testing.md lists the allowed ones).
exec python3 -m pytest -q -rs -p no:cacheprovider "$@"
