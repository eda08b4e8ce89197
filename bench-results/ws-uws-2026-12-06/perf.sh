#!/bin/bash
# perf on the WS fan-out server during one ringload run (cpu-clock, 5 s), after
# ../i15-layers-2026-12-06/perf-tls.sh. Idle connections: see idle-mem.sh.
# usage: perf.sh NAME rc|uws RINGCAST_BIN RINGLOAD_BIN OUTDIR [ringload args...]
#   e.g. perf.sh s1-rc rc target/release/ringcast target/release/ringload . -s 1000 -r 1 --rate 300 -d 8s
set -e
name=$1; kind=$2; bin=$3; rl=$4; out=$5; shift 5
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
if [ "$kind" = rc ]; then
  taskset -c 0 $bin --listen 127.0.0.1:$port --shards 1 --log warn >/dev/null 2>&1 &
  pid=$!
else
  export UWS_HOME=/tmp/ws-bench-uws UWS_PORT=$port SERVER_CPU=0
  /work/shared/peers/uws.sh start ws >/dev/null
  pid=$(cat $UWS_HOME/server.pid)
fi
sleep 0.5
taskset -c 1 $rl fanout --proto ws --sub-url "http://127.0.0.1:$port/rooms/{room}/ws" --pub-url "http://127.0.0.1:$port/rooms/{room}/messages" \
  --pub-pipeline 8 -t 1 -q --json --size 100 "$@" > $out/perf-$name-ringload.json &
lp=$!
sleep 2.5
perf record -e cpu-clock -F 1999 -g -p $pid -o /tmp/ws-bench-perf-$name.data -- sleep 5 2>/dev/null
wait $lp || true
if [ "$kind" = rc ]; then kill -TERM $pid; wait $pid || true; else /work/shared/peers/uws.sh stop; fi
perf report -i /tmp/ws-bench-perf-$name.data --no-children --sort symbol --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -60 > $out/perf-$name-flat.txt
perf report -i /tmp/ws-bench-perf-$name.data --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -10 > $out/perf-$name-dso.txt
