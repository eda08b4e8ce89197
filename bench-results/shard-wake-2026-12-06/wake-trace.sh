#!/bin/bash
# ws-bench's wake-trace.sh (bench-results/ws-uws-2026-12-06), with the proto as an argument and
# the shard's thread id recorded, so that wake-trace-tid.py follows that thread and its ring
# only (the original wake-trace.py matches every thread named shard-0 on the machine).
# 2 s of io_uring:io_uring_task_add / io_uring_local_work_run and sched_wakeup / sched_switch,
# all CPUs, in S2 at 300 msg/s.
# usage: wake-trace.sh RINGCAST_BIN RINGLOAD_BIN OUTDIR NAME [h1|ws]
set -e
bin=$1; rl=$2; out=$3; name=$4; proto=${5:-h1}
here=$(cd "$(dirname "$0")" && pwd)
path=$([ "$proto" = ws ] && echo ws || echo events)
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
taskset -c 0 $bin --listen 127.0.0.1:$port --shards 1 --log warn >/dev/null 2>&1 & pid=$!
sleep 0.5
tid=$(grep -l '^shard-0$' /proc/$pid/task/*/comm | head -1 | cut -d/ -f5)
taskset -c 1 $rl fanout --proto $proto -s 10000 -r 100 --rate 300 -d 7s -t 1 -q --json --size 100 --pub-pipeline 8 \
  --src-ips 4 --sub-url "http://127.0.0.1:$port/rooms/{room}/$path" --pub-url "http://127.0.0.1:$port/rooms/{room}/messages" \
  > $out/wake-trace-$name-ringload.json & lp=$!
sleep 3.5
perf record -q -e io_uring:io_uring_task_add -e io_uring:io_uring_local_work_run -e sched:sched_wakeup -e sched:sched_switch \
  -a -o /tmp/taskrun-tp.data -- sleep 2 >/dev/null 2>&1
wait $lp || true
kill $pid; wait $pid || true
perf script -i /tmp/taskrun-tp.data -F comm,tid,cpu,time,event,trace > /tmp/taskrun-tp.txt 2>/dev/null
{
  echo "server pid $pid, shard tid $tid, proto $proto"
  echo "== ws-bench wake-trace.py (every thread named shard-0, every ring) =="
  python3 "$here/wake-trace-wsbench.py" /tmp/taskrun-tp.txt
  echo "== wake-trace-tid.py (this shard's thread and ring only) =="
  python3 "$here/wake-trace-tid.py" /tmp/taskrun-tp.txt $tid
  echo "== other threads named shard-0 in the trace =="
  grep -o 'prev_comm=shard-0 prev_pid=[0-9]*' /tmp/taskrun-tp.txt | sort | uniq -c
} | tee $out/wake-trace-$name.txt
