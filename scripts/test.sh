#!/usr/bin/env bash
# Squall's whole test suite: installs what the tests need when missing, then runs
# rustfmt, clippy (warnings are errors) and every test of the workspace, including the
# end-to-end tests that download from the real `squall` binary with real clients
# (python3-libtorrent, aria2c) over loopback.
#
# Usage: scripts/test.sh            (from anywhere inside the repository)
# Env:   SQUALL_SKIP_INSTALL=1      do not apt-get anything (tests needing tools then skip,
#                                   unless SQUALL_REQUIRE_TOOLS=1 makes them fail)
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive: real clients and tools we did not write.
# man-db renders the generated man pages; dpkg-dev, binutils, lintian and adduser build, check
# and install the .deb (tests/package.rs); prometheus brings promtool for the alert rules
# (tests/monitoring.rs; on a machine booted with systemd it also starts a Prometheus server);
# systemd brings systemd-analyze (verify, security) for the unit tests in tests/deploy.rs;
# chromium (headless) loads the dashboard in tests/dashboard.rs (chromium-driver: WebDriver).
PACKAGES=(mktorrent transmission-cli python3-libtorrent aria2 opentracker openssl
  man-db dpkg-dev binutils lintian adduser prometheus systemd chromium chromium-driver
  curl wget)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ] && [ "${SQUALL_SKIP_INSTALL:-0}" != 1 ]; then
  echo "==> installing test tools: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# With the tools installed, a test that cannot find them is a failure, not a skip.
if [ "${SQUALL_SKIP_INSTALL:-0}" != 1 ]; then
  export SQUALL_REQUIRE_TOOLS=1
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --workspace --locked -- --test-threads="${SQUALL_TEST_THREADS:-2}"
