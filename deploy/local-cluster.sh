#!/usr/bin/env bash
# A redis-server and three ringcast nodes on this machine, for trying cluster mode by hand.
#   deploy/local-cluster.sh start [REDIS_PORT [NODE_PORT_1 NODE_PORT_2 NODE_PORT_3]]
#   deploy/local-cluster.sh status | stop
# Ports default to free ones. State (pids, ports, logs) lives in $RINGCAST_CLUSTER_DIR
# (default /tmp/ringcast-local-cluster). The binary is $RINGCAST (default: the newer of
# target/release and target/debug). Extra ringcast flags: $RINGCAST_FLAGS (e.g. "--shards 2").
set -euo pipefail
dir=${RINGCAST_CLUSTER_DIR:-/tmp/ringcast-local-cluster}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${RINGCAST:-}
if [[ -z $bin ]]; then
  # The newer of the release and debug builds.
  for candidate in "$root/target/release/ringcast" "$root/target/debug/ringcast"; do
    [[ -x $candidate && ( -z $bin || $candidate -nt $bin ) ]] && bin=$candidate
  done
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  command -v redis-server >/dev/null || { echo "redis-server not installed (apt-get install redis-server)" >&2; exit 1; }
  [[ -n $bin ]] || { echo "no ringcast binary: cargo build --release, or set RINGCAST" >&2; exit 1; }
  if alive "$dir/redis.pid"; then echo "already running; $0 stop first" >&2; exit 1; fi
  mkdir -p "$dir"
  local redis_port=${1:-$(free_port)}; shift || true
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize no >"$dir/redis.log" 2>&1 &
  echo $! >"$dir/redis.pid"
  echo "$redis_port" >"$dir/redis.port"
  for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  for n in 1 2 3; do
    local port=${1:-$(free_port)}; shift || true
    # shellcheck disable=SC2086
    "$bin" --listen "127.0.0.1:$port" --node-id "node$n" \
      --cluster-redis "redis://127.0.0.1:$redis_port" ${RINGCAST_FLAGS:-} \
      >"$dir/node$n.log" 2>&1 &
    echo $! >"$dir/node$n.pid"
    echo "$port" >"$dir/node$n.port"
  done
  sleep 0.5
  status
  local p1; p1=$(cat "$dir/node1.port")
  echo "try: curl -N localhost:$(cat "$dir/node2.port")/rooms/lobby/events &  curl -d hi localhost:$p1/rooms/lobby/messages"
}

status() {
  local ok=0
  if alive "$dir/redis.pid"; then echo "redis  up    port $(cat "$dir/redis.port")"; else echo "redis  down"; ok=1; fi
  for n in 1 2 3; do
    if alive "$dir/node$n.pid"; then
      local port; port=$(cat "$dir/node$n.port")
      local ready; ready=$(curl -s -m 1 "127.0.0.1:$port/readyz" || echo "no answer")
      echo "node$n  up    port $port  readyz: $ready"
    else
      echo "node$n  down"; ok=1
    fi
  done
  return $ok
}

stop() {
  for name in node1 node2 node3 redis; do
    if alive "$dir/$name.pid"; then kill "$(cat "$dir/$name.pid")"; fi
    rm -f "$dir/$name.pid"
  done
  echo stopped
}

case ${1:-} in
  start) shift; start "$@" ;;
  status) status ;;
  stop) stop ;;
  *) echo "usage: $0 start [REDIS_PORT [PORT1 PORT2 PORT3]] | status | stop" >&2; exit 2 ;;
esac
