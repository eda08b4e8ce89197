#!/usr/bin/env python3
"""Tables from rows-<tag>.json written by run.py. Usage: summarize.py -run1 -run2 ..."""
import json, os, statistics as st, sys

HERE = os.path.dirname(os.path.abspath(__file__))


def med(xs):
    xs = [x for x in xs if x is not None]
    return round(st.median(xs), 3) if xs else None


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "–"


for tag in sys.argv[1:]:
    rows = json.load(open(os.path.join(HERE, f"rows{tag}.json")))
    print(f"\n### {tag.lstrip('-')}\n")
    print("| scenario | measurement | server | rate msg/s | clean runs | deliveries/s (median) | server CPU µs/delivery (median, all runs) | (clean runs only) | ringload CPU µs/delivery | bytes read / delivery | loadavg (1 min) before slots |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    cells = {}
    for scen in ("S1", "S2"):
        for kind in ("common", "high"):
            for srv in ("before", "after", "nchan"):
                xs = [r for r in rows if r["scenario"] == scen and r["kind"] == kind and r["server"] == srv]
                if not xs:
                    continue
                cl = [r for r in xs if r["clean"]]
                cpu = med([r["server_cpu_us_per_delivery"] for r in xs])
                cpu_clean = med([r["server_cpu_us_per_delivery"] for r in cl])
                cells[(scen, kind, srv)] = (cpu, cpu_clean)
                print(f"| {scen} | fixed rate ({kind}) | {srv} | {xs[0]['rate']:.0f} | {len(cl)}/{len(xs)} | {med([r['deliveries_per_s'] for r in xs]):,.0f} | {cpu} | {cpu_clean} | "
                      f"{med([r['ringload_cpu_us_per_delivery'] for r in xs])} | {med([r['bytes_per_delivery'] for r in xs])} | {' '.join(r['loadavg_before_slot'][0] for r in xs)} |")
        # sweeps: highest clean rate per round
        best = {}
        for srv in ("before", "after", "nchan"):
            rounds = sorted({r["round"] for r in rows if r["scenario"] == scen and r["server"] == srv})
            per = []
            for rnd in rounds:
                xs = [r for r in rows if r["scenario"] == scen and r["server"] == srv and r["round"] == rnd]
                if not any(r["kind"] == "sweep" for r in xs):
                    continue
                ok = [r for r in xs if r["clean"]]
                per.append((max(r["deliveries_per_s"] for r in ok) if ok else 0,
                            max(ok, key=lambda r: r["deliveries_per_s"])["server_cpu_us_per_delivery"] if ok else None))
            if per:
                best[srv] = per
        if best:
            print(f"\n{scen} highest clean deliveries/s per round (any run of the slot: fixed rates 5 s, sweep steps 3 s; the sweep stops at its first unclean step; 0 = nothing clean):\n")
            for srv, per in best.items():
                print(f"- {srv}: {', '.join(f'{d:,.0f}' for d, _ in per)} (median {med([d for d, _ in per]):,.0f}); server CPU µs/delivery at that step: {[c for _, c in per]}")
            if all(s in best for s in ("before", "after", "nchan")):
                b, a, n = (med([d for d, _ in best[s]]) for s in ("before", "after", "nchan"))
                print(f"- ratios of medians: after/before {ratio(a, b)}, before/nchan {ratio(b, n)}, after/nchan {ratio(a, n)}")
        for kind in ("common", "high"):
            b, a, n = (cells.get((scen, kind, s), (None, None))[0] for s in ("before", "after", "nchan"))
            if b and a:
                print(f"\n{scen} fixed {kind}: server CPU/delivery after/before {ratio(a, b)}" + (f", nchan/before {ratio(n, b)}, nchan/after {ratio(n, a)}" if n else ""))
