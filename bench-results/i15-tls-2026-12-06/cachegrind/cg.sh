#!/bin/bash
# usage: cg.sh NAME RINGCAST_BIN RATE -> cachegrind of the server under S1 over TLS (1000 subs) at RATE msg/s for 10 s
set -e
name=$1; bin=$2; rate=$3; out=${OUT:-.}
dir=$(mktemp -d /tmp/i15tls-cert.XXXX)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout $dir/key.pem -out $dir/cert.pem -days 2 -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
tport=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
taskset -c 0 valgrind --tool=cachegrind --cache-sim=yes --D1=32768,8,64 --LL=1048576,16,64 --cachegrind-out-file=$out/cg-$name-r$rate.out $bin --listen 127.0.0.1:$port --tls-listen 127.0.0.1:$tport --tls-cert $dir/cert.pem --tls-key $dir/key.pem --shards 1 --log warn > $out/cg-$name-r$rate.log 2>&1 &
pid=$!
for i in $(seq 1 200); do (echo > /dev/tcp/127.0.0.1/$tport) 2>/dev/null && break; sleep 0.2; done
taskset -c 1 /tmp/i15tls/main/ringload fanout --sub-url "https://127.0.0.1:$tport/rooms/{room}/events" --insecure --pub-url "http://127.0.0.1:$port/rooms/{room}/messages" -t 1 -q --json -s 1000 -r 1 --size 100 --rate $rate -d 10s --max-p99 10s --pub-pipeline 8 > $out/cg-$name-r$rate-ringload.json || true
curl -s 127.0.0.1:$port/metrics | grep -E "^ringcast_(writes|deliveries|publishes)_total" > $out/cg-$name-r$rate-metrics.txt || true
kill -TERM $pid; wait $pid || true
python3 -c "import json;d=json.load(open('$out/cg-$name-r$rate-ringload.json'));print('$name r$rate', 'delivered',d['delivered'],'clean',d['verdict'])"
cat $out/cg-$name-r$rate-metrics.txt | tr '\n' ' '; echo
rm -rf $dir
