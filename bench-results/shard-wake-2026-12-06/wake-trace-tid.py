#!/usr/bin/env python3
"""The ws-bench wake-trace.py, per thread id and per ring. Its original matches the shard by
name (comm shard-0) and counts every io_uring_task_add on the machine; another ringcast's idle
shard (also named shard-0) and other rings then mix in. This one follows one thread id, counts
only the task work queued for *its* ring (the ring pointer its own io_uring_local_work_run
events name), and splits its time off the CPU by the state it left in.
Usage: wake-trace-tid.py PERF_SCRIPT.txt SHARD_TID"""
import re
import sys

path, tid = sys.argv[1], sys.argv[2]
ev, rings = [], set()
for line in open(path):
    m = re.match(r'\s*(\S.*?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s+(.*)$', line)
    if not m:
        continue
    comm, t_id, cpu, t, e, tr = m.groups()
    if e == 'io_uring:io_uring_local_work_run' and t_id == tid:
        rings.add(re.search(r'ring (\S+),', tr).group(1))
    ev.append((float(t), t_id, e, tr))
ev.sort()
print(f"shard tid {tid}; its ring(s): {sorted(rings)}")
off, state, pending, sleeps, delays, off_by, adds = None, None, [], [], [], {}, 0
for t, t_id, e, tr in ev:
    if e == 'sched:sched_switch' and f'prev_pid={tid} ' in tr:
        off, state, pending = t, re.search(r'prev_state=(\S+)', tr).group(1)[0], []
    elif e == 'sched:sched_switch' and f'next_pid={tid} ' in tr and off is not None:
        off_by[state] = off_by.get(state, 0) + t - off
        off = None
    elif e == 'sched:sched_wakeup' and f'pid={tid} ' in tr and off is not None and state == 'S':
        sleeps.append((t - off, [t - p for p in pending]))
        delays += [t - p for p in pending]
        off_by['S'] = off_by.get('S', 0) + t - off
        off, state = t, 'W'  # woken, waiting for the CPU
    elif e == 'io_uring:io_uring_task_add' and re.search(r'ring (\S+),', tr).group(1) in rings:
        adds += 1
        if off is not None and state == 'S':
            pending.append(t)
sleeps.sort(key=lambda s: -s[0])
print(f"task_adds for its ring: {adds}; sleeps: {len(sleeps)}, total {sum(s[0] for s in sleeps) * 1000:.0f} ms; "
      f"with task work queued during the sleep: {sum(1 for s in sleeps if s[1])}")
print("longest: ms asleep | task_adds while asleep | how long each had waited at the wakeup (ms, first 6)")
for d, waited in sleeps[:8]:
    print(f"  {d * 1000:6.1f} | {len(waited):3d} | {[round(w * 1000, 2) for w in waited][:6]}")
delays.sort()
if delays:
    print(f"task_add while asleep -> its wakeup: n {len(delays)}, p50 {delays[len(delays) // 2] * 1000:.3f} ms, "
          f"max {delays[-1] * 1000:.3f} ms")
print("off CPU by state: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in sorted(off_by.items()))
      + "  (S asleep, R preempted, W woken and waiting for the CPU)")
