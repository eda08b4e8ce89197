#!/bin/bash
# Does the shard sleep while io_uring has work queued for it? S2 over WS at 300 msg/s; 2 s of
# io_uring:io_uring_task_add / io_uring_local_work_run and sched_wakeup / sched_switch, all
# CPUs; wake-trace.py lists the shard's sleeps and the task work queued during each one.
# usage: wake-trace.sh RINGCAST_BIN RINGLOAD_BIN OUTDIR [NAME -s N -r N --rate R]  (default: S2 at 300 msg/s)
set -e
bin=$1; rl=$2; out=$3; name=${4:-}; shift 3; [ $# -gt 0 ] && shift
load=("$@"); [ ${#load[@]} -eq 0 ] && load=(-s 10000 -r 100 --rate 300)
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
taskset -c 0 $bin --listen 127.0.0.1:$port --shards 1 --log warn >/dev/null 2>&1 & pid=$!
sleep 0.5
taskset -c 1 $rl fanout --proto ws "${load[@]}" -d 7s -t 1 -q --json --size 100 --pub-pipeline 8 \
  --sub-url "http://127.0.0.1:$port/rooms/{room}/ws" --pub-url "http://127.0.0.1:$port/rooms/{room}/messages" > $out/wake-trace$name-ringload.json & lp=$!
sleep 3.5
perf record -q -e io_uring:io_uring_task_add -e io_uring:io_uring_local_work_run -e sched:sched_wakeup -e sched:sched_switch -a -o /tmp/ws-bench-tp.data -- sleep 2 >/dev/null 2>&1
wait $lp || true
kill $pid; wait $pid || true
perf script -i /tmp/ws-bench-tp.data -F comm,tid,cpu,time,event,trace > /tmp/ws-bench-tp.txt 2>/dev/null
python3 "$(dirname "$0")/wake-trace.py" /tmp/ws-bench-tp.txt | tee $out/wake-trace$name.txt
