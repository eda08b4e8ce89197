#!/bin/bash
# usage: trace-count.sh NAME RINGCAST_BIN [tls|h1]  -> io_uring tracepoint counts over 5 s of S1 at 80 msg/s
set -e
name=$1; bin=$2; proto=${3:-tls}; RATE=${RATE:-80}
dir=$(mktemp -d /tmp/i15tls-cert.XXXX)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout $dir/key.pem -out $dir/cert.pem -days 2 -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
tport=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
taskset -c 0 $bin --listen 127.0.0.1:$port --tls-listen 127.0.0.1:$tport --tls-cert $dir/cert.pem --tls-key $dir/key.pem --shards 1 --log warn >/dev/null 2>&1 &
pid=$!
sleep 0.5
if [ $proto = tls ]; then sub="https://127.0.0.1:$tport/rooms/{room}/events --insecure"; else sub="http://127.0.0.1:$port/rooms/{room}/events"; fi
taskset -c 1 ${RINGLOAD:-/tmp/i15bin/after/ringload} fanout --sub-url $sub --pub-url http://127.0.0.1:$port/rooms/{room}/messages -t 1 -q --json -s 1000 -r 1 --size 100 --rate $RATE -d 8s --pub-pipeline 8 > ${OUT:-.}/trace-$name-ringload.json &
lp=$!
sleep 2
c0=$(awk '{print $14+$15}' /proc/$pid/stat)
perf stat -x, -e 'minor-faults,major-faults,context-switches,cpu-migrations,syscalls:sys_enter_io_uring_enter,io_uring:io_uring_submit_req,io_uring:io_uring_complete,io_uring:io_uring_poll_arm,io_uring:io_uring_queue_async_work,io_uring:io_uring_short_write,io_uring:io_uring_task_add,io_uring:io_uring_local_work_run,io_uring:io_uring_cqring_wait' -p $pid -- sleep 5 2>&1 | cut -d, -f1,3
c1=$(awk '{print $14+$15}' /proc/$pid/stat)
echo "cpu_ticks_5s,$((c1-c0))"
wait $lp || true  # ringload exits non-zero when not clean: the server is stopped anyway
kill -TERM $pid; wait $pid || true
python3 -c "import json;d=json.load(open('${OUT:-.}/trace-$name-ringload.json'));print('delivered',d['delivered'],'clean',d['verdict']['clean'])"
rm -rf $dir
