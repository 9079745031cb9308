#!/usr/bin/env bash
# Set up .venv (if needed) with the board's extra and serve the live board over a folder of runs
# (default: the demo's output folder). Extra arguments go to `hyperlapse board`.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh" "demo,board"
cd "$ROOT"
if [ $# -eq 0 ] || [[ "$1" == -* ]]; then set -- hyperlapse-demo "$@"; fi
mkdir -p "$1"
"$VENV/bin/hyperlapse" board "$@"
