#!/bin/bash
# How the shard enters the kernel in S2 over SSE at 300 msg/s: 2 s of
# syscalls:sys_enter_io_uring_enter (flags, min_complete) for the shard's thread and
# io_uring_local_work_run for its ring. Flags 1 = GETEVENTS, 9 = GETEVENTS|EXT_ARG (the wait),
# 0 = submit only (under DEFER_TASKRUN it runs no deferred task work).
# usage: enter-flags.sh RINGCAST_BIN RINGLOAD_BIN OUTFILE
set -e
bin=$1; rl=$2; outf=$3
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
taskset -c 0 $bin --listen 127.0.0.1:$port --shards 1 --log warn >/dev/null 2>&1 & pid=$!
sleep 0.5
tid=$(grep -l '^shard-0$' /proc/$pid/task/*/comm | head -1 | cut -d/ -f5)
taskset -c 1 $rl fanout -s 10000 -r 100 --rate 300 -d 7s -t 1 -q --json --size 100 --pub-pipeline 8 --src-ips 4 \
  --sub-url "http://127.0.0.1:$port/rooms/{room}/events" --pub-url "http://127.0.0.1:$port/rooms/{room}/messages" > $outf.ringload.json & lp=$!
sleep 3.5
perf record -q -e syscalls:sys_enter_io_uring_enter -e io_uring:io_uring_local_work_run -t $tid -o /tmp/taskrun-ef.data -- sleep 2 >/dev/null 2>&1
wait $lp || true
kill $pid; wait $pid || true
perf script -i /tmp/taskrun-ef.data -F event,trace 2>/dev/null | python3 -c '
import re, sys, collections
c = collections.Counter(); runs = 0; run_items = 0
for l in sys.stdin:
    if "sys_enter_io_uring_enter" in l:
        f = int(re.search(r"flags: (0x[0-9a-f]+|\d+)", l).group(1), 0)
        m = int(re.search(r"min_complete: (0x[0-9a-f]+|\d+)", l).group(1), 0)
        c[(f, m)] += 1
    elif "local_work_run" in l:
        runs += 1; run_items += int(re.search(r"count (\d+)", l).group(1))
print("io_uring_enter by (flags, min_complete):", dict(sorted(c.items())))
print(f"local_work_run: {runs} runs, {run_items} task-work items")
' | tee $outf
python3 -c "import json;d=json.load(open('$outf.ringload.json'));s=d['latency_from_schedule'];print('p50', s['p50_ms'], 'p99', s['p99_ms'], d['verdict'])" | tee -a $outf
