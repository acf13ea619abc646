#!/usr/bin/env bash
# Installs Squall: release build, the binary, the systemd unit, a default config, the data
# directories and the docs.
#
# Usage: scripts/install.sh [--prefix DIR] [--destdir DIR] [--bin FILE] [--dry-run] [--no-build]
#   --prefix DIR   install root for bin/ and share/ (default /usr/local)
#   --destdir DIR  stage every file under DIR (for packages; also $DESTDIR). Paths written into
#                  the unit and the config stay those of the real install; no user is created
#                  and nothing is chowned (the package's scripts do that).
#   --bin FILE     install this squall binary (implies --no-build)
#   --dry-run      print what would be done, change nothing
#   --no-build     use an existing target/release/squall
#   -h, --help     print this help
# The unit goes to /etc/systemd/system (or $SYSTEMD_DIR), the config to /etc/squall (or
# $CONFIG_DIR), mode 0640 root:squall since it may hold the admin token; an existing config is
# never overwritten. A `squall` system user is created when missing. The data root
# /srv/squall (or $DATA_ROOT) gets torrents/ and data/, owned by squall, mode 0750.
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=/usr/local
DEST=${DESTDIR:-}
DRY=0
BUILD=1
BIN=target/release/squall
SYSTEMD_DIR=${SYSTEMD_DIR:-/etc/systemd/system}
CONFIG_DIR=${CONFIG_DIR:-/etc/squall}
DATA_ROOT=${DATA_ROOT:-/srv/squall}
SERVICE_USER=squall
usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
    --prefix=*) PREFIX=${1#--prefix=}; shift ;;
    --destdir) DEST=${2:?--destdir needs a directory}; shift 2 ;;
    --destdir=*) DEST=${1#--destdir=}; shift ;;
    --bin) BIN=${2:?--bin needs a file}; BUILD=0; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

run() {
  if [ "$DRY" = 1 ]; then echo "would run: $*"; else echo "+ $*"; "$@"; fi
}
# Ownership only on a real install: under DESTDIR the user may not exist on this machine.
owned() {
  if [ -z "$DEST" ]; then echo "-o $1 -g $2"; fi
}

if [ "$BUILD" = 1 ]; then
  run cargo build --release --locked -p squall
fi
if [ "$DRY" = 0 ] && [ ! -x "$BIN" ]; then
  echo "error: $BIN missing: build it (cargo build --release) or drop --no-build" >&2
  exit 1
fi
if [ -z "$DEST" ] && ! getent passwd "$SERVICE_USER" >/dev/null; then
  run useradd --system --no-create-home --home-dir /var/lib/squall --shell /usr/sbin/nologin "$SERVICE_USER"
fi
run install -d "$DEST$PREFIX/bin" "$DEST$PREFIX/share/doc/squall" "$DEST$SYSTEMD_DIR"
# shellcheck disable=SC2046 # `owned` prints separate words on purpose
run install -d -m 0750 $(owned root "$SERVICE_USER") "$DEST$CONFIG_DIR"
# shellcheck disable=SC2046
run install -d -m 0750 $(owned "$SERVICE_USER" "$SERVICE_USER") "$DEST$DATA_ROOT" "$DEST$DATA_ROOT/torrents" "$DEST$DATA_ROOT/data"
run install -m 0755 "$BIN" "$DEST$PREFIX/bin/squall"
run install -m 0644 docs/operations.md docs/architecture.md README.md "$DEST$PREFIX/share/doc/squall/"
unit=$(mktemp)
sed "s#/usr/local/bin/squall#$PREFIX/bin/squall#; s#/usr/local/share/doc#$PREFIX/share/doc#; s#/srv/squall#$DATA_ROOT#g" \
  configs/squall.service > "$unit"
run install -m 0644 "$unit" "$DEST$SYSTEMD_DIR/squall.service"
rm -f "$unit"
if [ -e "$DEST$CONFIG_DIR/squall.toml" ]; then
  echo "keeping existing $DEST$CONFIG_DIR/squall.toml"
else
  tmp=$(mktemp)
  sed "s|^# torrents_dir = .*|torrents_dir = \"$DATA_ROOT/torrents\"|; s|^# data_dir = .*|data_dir = \"$DATA_ROOT/data\"|; s|^# state_dir = .*|state_dir = \"/var/lib/squall\"|" \
    configs/default.toml > "$tmp"
  # shellcheck disable=SC2046
  run install -m 0640 $(owned root "$SERVICE_USER") "$tmp" "$DEST$CONFIG_DIR/squall.toml"
  rm -f "$tmp"
fi
echo
echo "Installed. Next: put .torrent files in $DATA_ROOT/torrents and content in $DATA_ROOT/data,"
echo "owned by squall (chown -R squall:squall $DATA_ROOT/data; the unit keeps it read-only):"
echo "Linux shows page-cache residency only to a file's owner, and page_cache_sends needs it."
echo "Then: systemctl daemon-reload && systemctl enable --now squall"
echo "Add or remove torrents later: change the files, then systemctl reload squall (SIGHUP)."
