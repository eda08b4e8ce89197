#!/bin/bash
# RSS per idle room WebSocket: N viewers of 100 rooms held idle by ringload, the server's
# VmRSS sampled every 0.25 s; per connection = (plateau - before) / N.
# Server on CPU 0, load generator on CPU 1; client source addresses spread over 127.0.0.x.
# usage: idle-rss.sh NAME ringcast|uws SERVER_BIN_OR_- RINGLOAD_BIN N OUTDIR
set -e
name=$1; kind=$2; bin=$3; rl=$4; n=$5; out=$6
ulimit -n 20000
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
if [ "$kind" = ringcast ]; then
  taskset -c 0 $bin --listen 127.0.0.1:$port --shards 1 --log warn --ws-ping-interval 1 >/dev/null 2>&1 &
  pid=$!
else
  # A private UWS_HOME (the package linked from the shared install) so another
  # engineer's uWS on the default port and pid file is left alone.
  export UWS_HOME=/tmp/ws-lean-uws UWS_PORT=$port SERVER_CPU=0
  mkdir -p $UWS_HOME; ln -sfn /tmp/ringcast-peers/uws/node_modules $UWS_HOME/node_modules
  /work/shared/peers/uws.sh start ws >/dev/null
  pid=$(cat $UWS_HOME/server.pid)
fi
sleep 1
rss0=$(awk '/VmRSS/{print $2}' /proc/$pid/status)
taskset -c 1 $rl fanout --proto ws --sub-url "http://127.0.0.1:$port/rooms/{room}/ws" -s $n -r 100 \
  --idle --hold 6s --src-ips 8 -t 1 -q --json > $out/idle-rss-$name-ringload.json &
lp=$!
max=0
while kill -0 $lp 2>/dev/null; do
  r=$(awk '/VmRSS/{print $2}' /proc/$pid/status); [ "$r" -gt "$max" ] && max=$r
  echo "$(date +%s.%N) $r" >> $out/idle-rss-$name-samples.txt
  sleep 0.25
done
wait $lp || true
if [ "$kind" = ringcast ]; then kill -TERM $pid; wait $pid || true; else /work/shared/peers/uws.sh stop; fi
echo "$name: rss before $rss0 kB, held max $max kB, $(( (max - rss0) * 1024 / n )) B per connection (n=$n)" | tee -a $out/idle-rss-summary.txt
