#!/usr/bin/env bash
# Make sure a Redis answers on 127.0.0.1:6379 (the production broker); install and start one if not.
set -euo pipefail
ping() { python3 - <<'PY'
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", 6379), timeout=1)
    s.sendall(b"PING\r\n"); ok = s.recv(16).startswith(b"+PONG"); s.close()
except OSError:
    ok = False
sys.exit(0 if ok else 1)
PY
}
ping && { echo "redis: answering on 127.0.0.1:6379"; exit 0; }
if ! command -v redis-server >/dev/null; then
  echo "redis: installing Debian's redis-server"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
for _ in $(seq 1 50); do ping && { echo "redis: started on 127.0.0.1:6379"; exit 0; }; sleep 0.1; done
echo "redis: failed to start on 127.0.0.1:6379" >&2; exit 1
