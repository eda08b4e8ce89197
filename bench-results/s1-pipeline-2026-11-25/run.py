#!/usr/bin/env python3
"""S1 (1000 subscribers, 1 room, 100-byte messages) for ringcast and nginx+nchan in one
run, with ringload publishing over a pipelined lane (`--pub-pipeline 8`), so the
publisher's round trip does not cap the rate. Same search as fanout_bench.py (quick):
double, bisect with 3-s runs, confirm with a 5-s run. Server on CPU 0, ringload on CPU 1.
Usage: bench-results/s1-pipeline-2026-11-25/run.py
"""
import json, os, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import fanout_bench as fb  # noqa: E402

PIPELINE = ["--pub-pipeline", "8"]
plain = fb.ringload
fb.ringload = lambda server, args, log: plain(server, args + PIPELINE, log)

log, results = [], {}
for server in (fb.Ringcast([]), fb.Nchan()):
    server.start()
    print(f"== {server.name} S1", flush=True)
    results[server.name] = fb.highest_clean(server, 1000, 1, 50, log, True)
    server.stop()
machine = {"nproc": os.cpu_count(), "kernel": os.uname().release,
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "ringcast_commit": subprocess.run(["git", "-C", fb.ROOT, "rev-parse", "--short", "HEAD"],
                                             capture_output=True, text=True).stdout.strip()}
json.dump({"machine": machine, "results": results}, open(os.path.join(HERE, "summary.json"), "w"), indent=1)
json.dump(log, open(os.path.join(HERE, "raw-runs.json"), "w"), indent=1)
print(json.dumps({"machine": machine, "results": results}, indent=1))
