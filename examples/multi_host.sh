#!/usr/bin/env bash
# Broker, worker pool and client as three separate processes, the way they run on separate
# hosts. Here all three run on this machine and the broker listens on loopback only.
#
# On real hosts the same three steps are:
#   host-a$  zmqdask-broker --port 8786
#   host-b$  zmqdask-worker tcp://host-a:8786 --nworkers 4        (on every worker host)
#   python:  client = Client("tcp://host-a:8786")
# The broker accepts anyone who can reach its port and payloads are pickles (code
# execution): expose it only on a trusted network.
set -euo pipefail
PYTHON=${PYTHON:-python3}
STOP_WAIT_S=10

if ! command -v zmqdask-broker >/dev/null; then
    echo "zmqdask-broker is not on PATH: activate the environment zmqdask is installed in" \
        "(after the README's first command: . .venv/bin/activate)" >&2
    exit 2
fi

tmp=$(mktemp -d)
broker_pid=""
pool_pid=""

stop() {
    # Ask politely (SIGTERM drains and stops), then insist after STOP_WAIT_S seconds.
    local pid=$1
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq $((STOP_WAIT_S * 10))); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    # Workers first, so they do not spend their last seconds looking for a broker.
    stop "$pool_pid"
    stop "$broker_pid"
    rm -rf "$tmp"
}
trap cleanup EXIT

# 1. The broker. Port 0 picks a free port; the broker prints the address it listens on.
zmqdask-broker --host 127.0.0.1 --port 0 --log-level WARNING >"$tmp/broker.out" &
broker_pid=$!
address=""
for _ in $(seq 100); do
    address=$(sed -n 's/^zmqdask-broker listening on \(tcp:[^ ]*\).*/\1/p' "$tmp/broker.out")
    [ -n "$address" ] && break
    kill -0 "$broker_pid" 2>/dev/null || { echo "the broker exited" >&2; exit 1; }
    sleep 0.1
done
[ -n "$address" ] || { echo "the broker did not start within 10 s" >&2; exit 1; }
echo "broker: $address"

# 2. A pool of two worker processes (on another host, this is the only command to run).
zmqdask-worker "$address" --nworkers 2 --log-level WARNING &
pool_pid=$!

# 3. A client in its own process: connects by address, waits for the workers, runs tasks.
"$PYTHON" - "$address" <<'EOF'
import sys

from zmqdask import Client


def inc(x: int) -> int:
    return x + 1


with Client(sys.argv[1]) as client:
    client.wait_for_workers(2, timeout=60)
    futures = client.map(inc, range(100))
    print("result:", sum(client.gather(futures)))
EOF
