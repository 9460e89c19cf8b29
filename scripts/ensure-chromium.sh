#!/usr/bin/env bash
# Make sure Debian's chromium is installed (tests/test_console.py drives it with Playwright; nothing downloads
# a browser build). Installs it when missing; needs root, as CI has.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then echo "chromium: $(/usr/bin/chromium --version 2>/dev/null || echo present)"; exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "chromium: missing; install it as root: apt-get install -y chromium (tests/test_console.py is skipped)" >&2
  exit 0
fi
echo "chromium: installing Debian's chromium"
apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
/usr/bin/chromium --version
