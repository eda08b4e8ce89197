#!/bin/bash
# usage: run.sh proto rate dur [subs rooms] [perf]
T=/work/perfwt/target/release
proto=$1; rate=$2; dur=$3; subs=${4:-1000}; rooms=${5:-1}; perfit=${6:-}
taskset -c 0 $T/ringcast --listen 127.0.0.1:23180 --shards 1 --log warn --h2c-listen 127.0.0.1:23181 --h3-listen 127.0.0.1:23443 --tls-cert /tmp/pb/cert.pem --tls-key /tmp/pb/key.pem > /tmp/pb/server.log 2>&1 &
SP=$!
sleep 0.8
case $proto in h1) url=http://127.0.0.1:23180; extra="";; h2) url=http://127.0.0.1:23181; extra="--proto h2";; h3) url=https://127.0.0.1:23443; extra="--proto h3 --insecure";; esac
c0=$(awk '{print $14+$15}' /proc/$SP/stat)
if [ -n "$perfit" ]; then (sleep 2; perf record -F 2000 -g -p $SP -o /tmp/pb/perf.data -- sleep 3 >/dev/null 2>&1) & fi
t0=$(date +%s.%N)
taskset -c 1 $T/ringload fanout --sub-url "$url/rooms/{room}/events" --pub-url "$url/rooms/{room}/messages" -t 1 -q --json $extra -s $subs -r $rooms --size 100 --rate $rate -d $dur > /tmp/pb/out.json
t1=$(date +%s.%N)
c1=$(awk '{print $14+$15}' /proc/$SP/stat)
wait_perf=$(jobs -p)
sleep 0.2
kill $SP; wait $SP 2>/dev/null
python3 - <<PY
import json
x=json.load(open('/tmp/pb/out.json'))
cpu=($c1-$c0)/100
wall=$t1-$t0
d=x['delivered']
print(f"$proto rate=$rate dps={x['deliveries_per_s']:.0f} clean={x['verdict']['clean']} {x['verdict']['reasons'][:2]} reads={x['reads']} deliv={d} stamp p50/p99={x['latency_from_stamp']['p50_ms']}/{x['latency_from_stamp']['p99_ms']} sched p99={x['latency_from_schedule']['p99_ms']} pubresp p50/p99={x['publish_response_time']['p50_ms']}/{x['publish_response_time']['p99_ms']} srvcpu={100*cpu/wall:.0f}% us/deliv={1e6*cpu/max(d,1):.2f} clientcpu={x['cpu_s']:.2f}")
PY
