#!/usr/bin/env python3
"""Pairs the interleaved runs in raw/ by round: p50/p99 from schedule, verdict, and which
build was lower. Usage: summarize.py raw"""
import json
import os
import statistics
import sys

d = sys.argv[1]
rows = {}
for f in sorted(os.listdir(d)):
    if f.endswith('.json'):
        rnd, name = f[:-5].split('-')
        j = json.load(open(os.path.join(d, f)))
        s = j['latency_from_schedule']
        rows.setdefault(int(rnd[1:]), {})[name] = (s['p50_ms'], s['p99_ms'], j['verdict']['clean'])
print("| round | main p50 | fix p50 | main p99 | fix p99 | main clean | fix clean |")
print("|---:|---:|---:|---:|---:|---|---|")
for r in sorted(rows):
    m, f = rows[r]['main'], rows[r]['fix']
    print(f"| {r} | {m[0]:.1f} | {f[0]:.1f} | {m[1]:.1f} | {f[1]:.1f} | {'yes' if m[2] else 'no'} | {'yes' if f[2] else 'no'} |")
for label, sel in [("all rounds", lambda m, f: True),
                   ("contended rounds (both p50 > 20 ms)", lambda m, f: m[0] > 20 and f[0] > 20)]:
    pairs = [(rows[r]['main'], rows[r]['fix']) for r in sorted(rows) if sel(rows[r]['main'], rows[r]['fix'])]
    if not pairs:
        continue
    mp50 = statistics.median(m[0] for m, f in pairs); fp50 = statistics.median(f[0] for m, f in pairs)
    mp99 = statistics.median(m[1] for m, f in pairs); fp99 = statistics.median(f[1] for m, f in pairs)
    lower50 = sum(1 for m, f in pairs if f[0] < m[0]); lower99 = sum(1 for m, f in pairs if f[1] < m[1])
    print(f"\n{label}: n {len(pairs)}; median p50 main {mp50:.1f} / fix {fp50:.1f} ms; median p99 main {mp99:.1f} / fix {fp99:.1f} ms;"
          f" fix lower p50 in {lower50}/{len(pairs)}, lower p99 in {lower99}/{len(pairs)};"
          f" clean main {sum(m[2] for m, f in pairs)}/{len(pairs)}, fix {sum(f[2] for m, f in pairs)}/{len(pairs)}")
