#!/usr/bin/env bash
# Set up .venv (if needed) and run the whole test suite, lint included.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh" test
cd "$ROOT"
"$VENV/bin/ruff" check src tests benchmarks integrations
"$VENV/bin/python" -m pytest "$@"
