#!/bin/bash
# usage: perf-rec.sh NAME RINGCAST_BIN  -> /tmp/i15tls/perf-NAME.data, 6 s of S1 over TLS at 80 msg/s
set -e
name=$1; bin=$2; RATE=${RATE:-80}; PROTO=${PROTO:-tls}
dir=$(mktemp -d /tmp/i15tls-cert.XXXX)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout $dir/key.pem -out $dir/cert.pem -days 2 -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
tport=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
taskset -c 0 $bin --listen 127.0.0.1:$port --tls-listen 127.0.0.1:$tport --tls-cert $dir/cert.pem --tls-key $dir/key.pem --shards 1 --log warn >/dev/null 2>&1 &
pid=$!
sleep 0.5
if [ $PROTO = tls ]; then sub="https://127.0.0.1:$tport/rooms/{room}/events --insecure"; else sub="http://127.0.0.1:$port/rooms/{room}/events"; fi
taskset -c 1 /tmp/i15tls/main/ringload fanout --sub-url $sub --pub-url http://127.0.0.1:$port/rooms/{room}/messages -t 1 -q --json -s 1000 -r 1 --size 100 --rate $RATE -d 10s --pub-pipeline 8 > ${OUT:-.}/perf-$name-ringload.json &
lp=$!
sleep 2.5
c0=$(awk '{print $14, $15}' /proc/$pid/stat)
perf record -e cpu-clock -F 4999 -p $pid -o ${OUT:-.}/perf-$name.data -- sleep 6 2>/dev/null >/dev/null
c1=$(awk '{print $14, $15}' /proc/$pid/stat)
echo "$name utime/stime ticks before: $c0 after: $c1 load $(cut -d' ' -f1 /proc/loadavg)"
wait $lp || true  # ringload exits non-zero when not clean: the server is stopped anyway
kill -TERM $pid; wait $pid || true
rm -rf $dir
