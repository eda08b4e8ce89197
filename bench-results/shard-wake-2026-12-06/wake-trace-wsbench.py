#!/usr/bin/env python3
"""The shard's sleeps (sched_switch out in state S -> sched_wakeup) and the io_uring task work
queued for its ring during each (io_uring_task_add). Usage: wake-trace.py PERF_SCRIPT.txt"""
import re, sys

ev = []
for line in open(sys.argv[1]):
    m = re.match(r'\s*(\S.*?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s+(.*)$', line)
    if m:
        comm, tid, cpu, t, e, tr = m.groups()
        ev.append((float(t), comm, e, tr))
ev.sort()
asleep, pending, sleeps, delays = None, [], [], []
for t, comm, e, tr in ev:
    if e == 'sched:sched_switch' and 'prev_comm=shard-0' in tr:
        if re.search(r'prev_state=(\S+)', tr).group(1).startswith('S'):
            asleep, pending = t, []
    elif e == 'sched:sched_wakeup' and 'comm=shard-0' in tr:
        if asleep is not None:
            sleeps.append((t - asleep, pending, asleep))
            delays += [t - p for p in pending]
        asleep = None
    elif e == 'io_uring:io_uring_task_add' and asleep is not None:
        pending.append(t)
sleeps.sort(key=lambda s: -s[0])
print(f"shard sleeps: {len(sleeps)}; total {sum(s[0] for s in sleeps) * 1000:.0f} ms; with task work queued during the sleep: {sum(1 for s in sleeps if s[1])}")
print("longest: ms asleep | task_adds while asleep | how long each had waited at the wakeup (ms, first 6)")
for d, p, t0 in sleeps[:8]:
    print(f"  {d * 1000:6.1f} | {len(p):3d} | {[round((t0 + d - x) * 1000, 1) for x in p][:6]}")
delays.sort()
if delays:
    print(f"task_add -> shard wakeup: n {len(delays)}, p50 {delays[len(delays) // 2] * 1000:.1f} ms, max {delays[-1] * 1000:.1f} ms")
