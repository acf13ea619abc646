#!/usr/bin/env bash
# Installs Squall: release build, the binary, the systemd unit, a default config and the docs.
#
# Usage: scripts/install.sh [--prefix DIR] [--dry-run] [--no-build]
#   --prefix DIR  install root for bin/ and share/ (default /usr/local)
#   --dry-run     print what would be done, change nothing
#   --no-build    use an existing target/release/squall
# The unit goes to /etc/systemd/system (or $SYSTEMD_DIR), the config to /etc/squall
# (or $CONFIG_DIR); an existing config is never overwritten. A `squall` system user is
# created when missing. Content is expected under /srv/squall (edit ReadOnlyPaths= and
# /etc/squall/squall.toml otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=/usr/local
DRY=0
BUILD=1
SYSTEMD_DIR=${SYSTEMD_DIR:-/etc/systemd/system}
CONFIG_DIR=${CONFIG_DIR:-/etc/squall}
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
    --prefix=*) PREFIX=${1#--prefix=}; shift ;;
    --dry-run) DRY=1; shift ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

run() {
  if [ "$DRY" = 1 ]; then echo "would run: $*"; else echo "+ $*"; "$@"; fi
}

if [ "$BUILD" = 1 ]; then
  run cargo build --release --locked -p squall
fi
BIN=target/release/squall
if [ "$DRY" = 0 ] && [ ! -x "$BIN" ]; then
  echo "error: $BIN missing: build it (cargo build --release) or drop --no-build" >&2
  exit 1
fi
run install -d "$PREFIX/bin" "$PREFIX/share/doc/squall" "$SYSTEMD_DIR" "$CONFIG_DIR"
run install -m 0755 "$BIN" "$PREFIX/bin/squall"
run install -m 0644 docs/operations.md docs/architecture.md README.md "$PREFIX/share/doc/squall/"
sed "s#/usr/local/bin/squall#$PREFIX/bin/squall#; s#/usr/local/share/doc#$PREFIX/share/doc#" \
  configs/squall.service > /tmp/squall.service.$$
run install -m 0644 /tmp/squall.service.$$ "$SYSTEMD_DIR/squall.service"
rm -f /tmp/squall.service.$$
if [ -e "$CONFIG_DIR/squall.toml" ]; then
  echo "keeping existing $CONFIG_DIR/squall.toml"
else
  tmp=$(mktemp)
  sed 's|^# torrents_dir = .*|torrents_dir = "/srv/squall/torrents"|; s|^# data_dir = .*|data_dir = "/srv/squall/data"|; s|^# state_dir = .*|state_dir = "/var/lib/squall"|' \
    configs/default.toml > "$tmp"
  run install -m 0644 "$tmp" "$CONFIG_DIR/squall.toml"
  rm -f "$tmp"
fi
if ! getent passwd squall >/dev/null; then
  run useradd --system --no-create-home --home-dir /var/lib/squall --shell /usr/sbin/nologin squall
fi
echo
echo "Installed. Next: put .torrent files in /srv/squall/torrents and content in /srv/squall/data,"
echo "owned by squall (chown -R squall:squall /srv/squall/data; the unit keeps it read-only):"
echo "Linux shows page-cache residency only to a file's owner, and page_cache_sends needs it."
echo "Then: systemctl daemon-reload && systemctl enable --now squall"
