#!/usr/bin/env bash
# The mutation check (not part of scripts/test.sh): applies each one-line bug listed in
# scripts/mutations.py to a temporary copy of the tree, runs the tests that should catch
# it, and exits 1 if any bug survives (2 if an entry no longer matches the code).
# Usage: bash scripts/mutation.sh [--list] [--only NAME] [--no-baseline]
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/mutations.py "$@"
