#!/bin/bash
# usage: h14-perf.sh NAME BIN OUTDIR
set -e
name=$1; bin=$2; out=$3; SUBS=${SUBS:-1000}; ROOMS=${ROOMS:-1}; RATE=${RATE:-1000}
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
taskset -c 0 $bin --listen 127.0.0.1:$port --shards 1 --log warn >/dev/null 2>&1 &
pid=$!
sleep 0.5
taskset -c 1 /tmp/h14bin/after/ringload fanout --sub-url http://127.0.0.1:$port/rooms/{room}/events --pub-url http://127.0.0.1:$port/rooms/{room}/messages -t 1 -q --json -s $SUBS -r $ROOMS --size 100 --rate $RATE -d 8s --pub-pipeline 8 > /tmp/h14-perf-$name.json &
lp=$!
sleep 2
perf record -e cpu-clock -F 1999 -g -p $pid -o /tmp/h14-perf-$name.data -- sleep 5 2>/dev/null
wait $lp
kill -TERM $pid; wait $pid || true
perf report -i /tmp/h14-perf-$name.data --no-children --sort symbol --stdio 2>/dev/null | grep -v '^$' | grep -E '^ +[0-9]' | head -40 > $out/perf-$name-flat.txt
perf report -i /tmp/h14-perf-$name.data --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -10 > $out/perf-$name-dso.txt
