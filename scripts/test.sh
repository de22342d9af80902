#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh machine, then runs it.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
# The browser tests drive Debian's Chromium (never a downloaded browser build); the
# completion test checks the zsh script with zsh itself.
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v zsh >/dev/null 2>&1 || missing+=(zsh)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing Debian's ${missing[*]} for the tests" >&2
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -qq "${missing[@]}"; } >/dev/null; then
            echo "test.sh: could not install ${missing[*]}; the tests that need them" \
                 "will be skipped" >&2
        fi
    else
        echo "test.sh: ${missing[*]} missing and cannot be installed here (needs root and" \
             "apt-get); the tests that need them will be skipped" >&2
    fi
fi
python3 -m ruff check holdover tests bench
exec python3 -m pytest -q -p no:cacheprovider "$@"
