#!/bin/bash
# S1 over TLS at 80 msg/s with perf on the server (cpu-clock, 5 s), after ../h14-hotpath-2026-12-06/perf.sh.
# usage: perf-tls.sh NAME RINGCAST_BIN OUTDIR   (ringload: /tmp/i15bin/after/ringload)
set -e
name=$1; bin=$2; out=$3; RATE=${RATE:-80}
dir=$(mktemp -d /tmp/i15-perf-cert.XXXX)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout $dir/key.pem -out $dir/cert.pem -days 2 -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
tport=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
taskset -c 0 $bin --listen 127.0.0.1:$port --tls-listen 127.0.0.1:$tport --tls-cert $dir/cert.pem --tls-key $dir/key.pem --shards 1 --log warn >/dev/null 2>&1 &
pid=$!
sleep 0.5
taskset -c 1 /tmp/i15bin/after/ringload fanout --sub-url https://127.0.0.1:$tport/rooms/{room}/events --insecure --pub-url http://127.0.0.1:$port/rooms/{room}/messages -t 1 -q --json -s 1000 -r 1 --size 100 --rate $RATE -d 8s --pub-pipeline 8 > $out/perf-$name-ringload.json &
lp=$!
sleep 2
perf record -e cpu-clock -F 1999 -g -p $pid -o /tmp/i15-perf-$name.data -- sleep 5 2>/dev/null
wait $lp
kill -TERM $pid; wait $pid || true
perf report -i /tmp/i15-perf-$name.data --no-children --sort symbol --stdio 2>/dev/null | grep -v '^$' | grep -E '^ +[0-9]' | head -50 > $out/perf-$name-flat.txt
perf report -i /tmp/i15-perf-$name.data --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -10 > $out/perf-$name-dso.txt
