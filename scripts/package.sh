#!/usr/bin/env bash
# Builds the Debian package target/debian/squall_<version>_<arch>.deb with dpkg-deb: the
# squall and squall-bench binaries, the systemd unit, /etc/squall/squall.toml (a conffile),
# man pages and bash/zsh/fish completions generated from the binaries' own clap definitions,
# the monitoring kit as examples, copyright and changelog. Installs the tools it needs.
#
# Usage: scripts/package.sh [--no-build] [--bin-dir DIR] [--lint] [--out DIR]
#   --no-build     package target/release/{squall,squall-bench} as they are (no cargo build)
#   --bin-dir DIR  package the binaries found in DIR (implies --no-build; tests pass the
#                  binaries cargo built for them, so CI needs no release build)
#   --lint         run lintian on the package; any tag not overridden fails the script
#   --out DIR      where the .deb goes (default target/debian)
# Env: DEB_REVISION (default 1), DEBFULLNAME / DEBEMAIL (the Maintainer field),
#      SOURCE_DATE_EPOCH (default: the last commit's date; makes the build reproducible),
#      SQUALL_SKIP_INSTALL=1 (never apt-get; fail with the package to install instead).
# Prints the path of the .deb on its last line.
set -euo pipefail
trap 'echo "error: scripts/package.sh failed at line $LINENO: $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/.."

BUILD=1
BIN_DIR=target/release
LINT=0
OUT=target/debian
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) BUILD=0; shift ;;
    --bin-dir) BIN_DIR=${2:?--bin-dir needs a directory}; BUILD=0; shift 2 ;;
    --bin-dir=*) BIN_DIR=${1#--bin-dir=}; BUILD=0; shift ;;
    --lint) LINT=1; shift ;;
    --out) OUT=${2:?--out needs a directory}; shift 2 ;;
    --out=*) OUT=${1#--out=}; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

# --- tools: command -> Debian package ------------------------------------------------------
need=(dpkg-deb:dpkg dpkg-shlibdeps:dpkg-dev strip:binutils gzip:gzip)
[ "$LINT" = 1 ] && need+=(lintian:lintian)
missing=()
for pair in "${need[@]}"; do
  command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "${SQUALL_SKIP_INSTALL:-0}" = 1 ]; then
    echo "error: missing tools; install them: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "==> installing packaging tools: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# --- binaries ------------------------------------------------------------------------------
if [ "$BUILD" = 1 ]; then
  echo "==> cargo build --release (squall, squall-bench)"
  cargo build --release --locked -p squall -p squall-bench
fi
for bin in squall squall-bench; do
  if [ ! -x "$BIN_DIR/$bin" ]; then
    echo "error: $BIN_DIR/$bin missing: build it (cargo build --release -p $bin) or drop --no-build" >&2
    exit 1
  fi
done

# Version from Cargo.toml (the workspace version squall inherits), plus a Debian revision.
UPSTREAM_VERSION=$(cargo pkgid --offline -p squall 2>/dev/null | sed 's/.*[@#]//')
if ! [[ "$UPSTREAM_VERSION" =~ ^[0-9][0-9A-Za-z.+~-]*$ ]]; then
  echo "error: cannot read squall's version from Cargo.toml (cargo pkgid -p squall gave '$UPSTREAM_VERSION')" >&2
  exit 1
fi
VERSION="$UPSTREAM_VERSION-${DEB_REVISION:-1}"
ARCH=$(dpkg --print-architecture)
MAINTAINER="${DEBFULLNAME:-Squall maintainers} <${DEBEMAIL:-squall@example.org}>"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/squall-package.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT="$WORK/root"
DOC="$ROOT/usr/share/doc/squall"
install -d "$ROOT/DEBIAN" "$ROOT/usr/bin" "$ROOT/lib/systemd/system" "$ROOT/etc/squall" \
  "$ROOT/usr/share/man/man1" "$ROOT/usr/share/bash-completion/completions" \
  "$ROOT/usr/share/zsh/vendor-completions" "$ROOT/usr/share/fish/vendor_completions.d" \
  "$DOC/examples/monitoring"

# Stripped as dh_strip does: Debian ships no debug info in the main package (lintian
# unstripped-binary-or-object); the release profile keeps it for perf, not for users.
for bin in squall squall-bench; do
  install -m 0755 "$BIN_DIR/$bin" "$ROOT/usr/bin/$bin"
  strip --strip-unneeded --remove-section=.comment --remove-section=.note "$ROOT/usr/bin/$bin"
done

# The unit as configs/squall.service has it, pointed at the packaged binary and docs.
sed -e 's#/usr/local/bin/squall#/usr/bin/squall#g' \
    -e 's#file:///usr/local/share/doc/squall/#file:///usr/share/doc/squall/#g' \
    configs/squall.service > "$ROOT/lib/systemd/system/squall.service"
chmod 0644 "$ROOT/lib/systemd/system/squall.service"

# The conffile: the defaults with the paths the unit expects (as scripts/install.sh does).
{
  echo "# /etc/squall/squall.toml: read by squall.service (squall seed --config ...)."
  echo "# Put .torrent files in /srv/squall/torrents and content in /srv/squall/data, owned by"
  echo "# squall; check edits with: squall config check /etc/squall/squall.toml"
  echo "# (docs: /usr/share/doc/squall/operations.md, man squall-seed)."
  echo
  sed -e 's|^# torrents_dir = .*|torrents_dir = "/srv/squall/torrents"|' \
      -e 's|^# data_dir = .*|data_dir = "/srv/squall/data"|' \
      -e 's|^# state_dir = .*|state_dir = "/var/lib/squall"|' \
      -e '/^# Use with: /d' \
      configs/default.toml
} > "$ROOT/etc/squall/squall.toml"
chmod 0644 "$ROOT/etc/squall/squall.toml"
# --syntax-only: the data directories belong to the box it is installed on, not this one.
if ! check=$("$ROOT/usr/bin/squall" config check --syntax-only "$ROOT/etc/squall/squall.toml" 2>&1); then
  echo "error: the packaged squall.toml does not pass squall config check: $check" >&2
  exit 1
fi

# Man pages and completions from the binaries themselves (hidden `generate` subcommand).
for bin in squall squall-bench; do
  "$ROOT/usr/bin/$bin" generate man "$WORK/man"
  "$ROOT/usr/bin/$bin" generate completions bash > "$ROOT/usr/share/bash-completion/completions/$bin"
  "$ROOT/usr/bin/$bin" generate completions zsh > "$ROOT/usr/share/zsh/vendor-completions/_$bin"
  "$ROOT/usr/bin/$bin" generate completions fish > "$ROOT/usr/share/fish/vendor_completions.d/$bin.fish"
done
for page in "$WORK"/man/*.1; do
  gzip -9n < "$page" > "$ROOT/usr/share/man/man1/$(basename "$page").gz"
done

# Docs. operations.md stays uncompressed: the unit's Documentation= links to it.
install -m 0644 docs/operations.md "$DOC/operations.md"
gzip -9n < README.md > "$DOC/README.md.gz"
gzip -9n < docs/architecture.md > "$DOC/architecture.md.gz"
if [ -d configs/monitoring ]; then
  find configs/monitoring -maxdepth 1 -type f -exec install -m 0644 -t "$DOC/examples/monitoring" {} +
fi
{
  echo "squall ($VERSION) unstable; urgency=medium"
  echo
  echo "  * Built by scripts/package.sh from commit $COMMIT; upstream changes are in the"
  echo "    git history."
  echo
  echo " -- $MAINTAINER  $(LC_ALL=C date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n > "$DOC/changelog.Debian.gz"
# The crates compiled into the binaries (proc-macros and build tools are not) and their licences.
crates=$(cargo tree --locked --offline -e normal,no-proc-macro --prefix none -f '{p} {l}' -p squall -p squall-bench \
  | grep -v -e '^$' -e ' (\*)' -e '(proc-macro)' -e ' (/' | LC_ALL=C sort -u | sed 's/^/ /')
if [ -z "$crates" ]; then
  echo "error: cargo tree listed no crates for the copyright file (run cargo fetch first?)" >&2
  exit 1
fi
# Copyright years: the first commit's to the one packaged.
# (sed, not head: head exits early and pipefail would end the script on git's SIGPIPE.)
first_year=$(git log --reverse --format=%cd --date=format:%Y 2>/dev/null | sed -n 1p || true)
last_year=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y)
years=${first_year:-$last_year}
[ "$years" = "$last_year" ] || years="$years-$last_year"
awk -v crates="$crates" -v years="$years" \
  '$0 == "@CRATES@" { print crates; next } { sub(/@YEARS@/, years); print }' \
  scripts/debian/copyright > "$DOC/copyright"

# Maintainer scripts and lintian overrides live in scripts/debian/.
for script in postinst prerm postrm; do
  install -m 0755 "scripts/debian/$script" "$ROOT/DEBIAN/$script"
done
install -d "$ROOT/usr/share/lintian/overrides"
install -m 0644 scripts/debian/lintian-overrides "$ROOT/usr/share/lintian/overrides/squall"
echo /etc/squall/squall.toml > "$ROOT/DEBIAN/conffiles"

# Depends: the shared libraries the binaries link (dpkg-shlibdeps reads a debian/control).
install -d "$WORK/shlibs/debian"
printf 'Source: squall\n\nPackage: squall\nArchitecture: any\n' > "$WORK/shlibs/debian/control"
shlibs=$(cd "$WORK/shlibs" && dpkg-shlibdeps -O -e "$ROOT/usr/bin/squall" -e "$ROOT/usr/bin/squall-bench" 2>/dev/null)
shlibs=${shlibs#shlibs:Depends=}
if [ -z "$shlibs" ]; then
  echo "error: dpkg-shlibdeps found no shared-library dependencies for the binaries" >&2
  exit 1
fi

(cd "$ROOT" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) \
  > "$ROOT/DEBIAN/md5sums"
installed_kib=$(du -s -k --exclude=DEBIAN "$ROOT" | cut -f1)
cat > "$ROOT/DEBIAN/control" <<EOF
Package: squall
Version: $VERSION
Architecture: $ARCH
Maintainer: $MAINTAINER
Installed-Size: $installed_kib
Depends: $shlibs, adduser
Section: net
Priority: optional
Description: thread-per-core io_uring BitTorrent seeding appliance
 Squall seeds large catalogs of torrents from bare-metal boxes: one shard per
 core, io_uring for network and disk I/O, bounded memory sized at start-up,
 Prometheus metrics and an admin endpoint. It needs Linux 6.1 or later with
 io_uring enabled.
 .
 This package ships the squall seeder, the squall-bench capacity benchmark,
 a hardened systemd unit (not enabled on install), a default configuration
 in /etc/squall, man pages, shell completions, and a Grafana dashboard and
 Prometheus rules as examples.
EOF

find "$ROOT" -exec touch --no-dereference --date="@$SOURCE_DATE_EPOCH" {} +
DEB="$OUT/squall_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Zxz --build "$ROOT" "$DEB" >/dev/null
echo "==> built $DEB"

if [ "$LINT" = 1 ]; then
  echo "==> lintian"
  # --fail-on warning: errors and warnings fail; info/pedantic tags are printed, not fatal.
  lintian --fail-on error,warning --info "$DEB"
fi
echo "$DEB"
