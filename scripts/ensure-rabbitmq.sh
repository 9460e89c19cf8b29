#!/usr/bin/env bash
# Make sure a RabbitMQ answers AMQP on 127.0.0.1:5672 (a supported broker: SLUICE_BROKER_URL=amqp://...);
# install Debian's rabbitmq-server and start it detached if not. Idempotent: an answering broker is left alone.
# The tests start private RabbitMQ nodes of their own from the same package (tests/serving_support.py).
set -euo pipefail
PORT="${RABBITMQ_NODE_PORT:-5672}"
ping() { python3 - "$PORT" <<'PY'
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
    s.sendall(b"AMQP\x00\x00\x09\x01")  # AMQP 0-9-1 protocol header: the broker answers with connection.start
    ok = s.recv(1) == b"\x01"
    s.close()
except OSError:
    ok = False
sys.exit(0 if ok else 1)
PY
}
ping && { echo "rabbitmq: answering on 127.0.0.1:$PORT"; exit 0; }
if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
  echo "rabbitmq: installing Debian's rabbitmq-server"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
fi
# Debian's wrapper runs the node as the rabbitmq user; -detached returns once the VM is spawned.
# A long ingest holds its message unacknowledged (acks_late) for up to 32 min: the package's
# consumer_timeout (30 min) would close the channel under it, so raise it to 2 h.
CONF="${RABBITMQ_CONFIG_FILE:-/etc/rabbitmq/rabbitmq}.conf"
if ! grep -qs '^consumer_timeout' "$CONF"; then
  mkdir -p "$(dirname "$CONF")" && echo "consumer_timeout = 7200000" >> "$CONF"
fi
# Name the node after localhost, not the host name, which a container may not resolve.
[ -e /etc/rabbitmq/rabbitmq-env.conf ] || { mkdir -p /etc/rabbitmq && echo "NODENAME=rabbit@localhost" > /etc/rabbitmq/rabbitmq-env.conf; }
if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
  systemctl start rabbitmq-server
else
  RABBITMQ_NODE_PORT="$PORT" rabbitmq-server -detached >/dev/null 2>&1 || true
fi
for _ in $(seq 1 240); do ping && { echo "rabbitmq: started on 127.0.0.1:$PORT"; exit 0; }; sleep 0.5; done
echo "rabbitmq: failed to start on 127.0.0.1:$PORT (see /var/log/rabbitmq/)" >&2; exit 1
