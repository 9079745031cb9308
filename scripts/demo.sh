#!/usr/bin/env bash
# Set up .venv (if needed) and run the demo: train, record, report.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh" demo
cd "$ROOT"
"$VENV/bin/hyperlapse" demo "$@"
