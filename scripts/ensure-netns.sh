#!/usr/bin/env bash
# The multi-host test (tests/reliability/test_multi_host.py) builds hosts from network namespaces:
# it needs root, `ip` (iproute2) and `unshare`/`setpriv` (util-linux). As root, install what is
# missing and remove namespaces a crashed run left behind; as another user, say what the test will do.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
  echo "netns: not root; tests/reliability/test_multi_host.py will fail (set SLUICE_SKIP_NETNS_TESTS=1 to skip it)"
  exit 0
fi
missing=()
command -v ip >/dev/null || missing+=(iproute2)
{ command -v unshare >/dev/null && command -v setpriv >/dev/null; } || missing+=(util-linux)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "netns: installing Debian's ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
"$python" -c "from bench.netns import remove_stale; stale = remove_stale(); print(f'netns: ready ({len(stale)} stale runs removed)')"
