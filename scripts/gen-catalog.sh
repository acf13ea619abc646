#!/bin/sh
# Generate N small torrents + content under DIR (see scripts/gen-catalog.py for details).
# Usage: scripts/gen-catalog.sh N DIR
set -eu
exec /usr/bin/python3 "$(dirname "$0")/gen-catalog.py" "$@"
