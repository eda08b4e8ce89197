#!/usr/bin/env python3
"""Tables from rows<tag>.json written by run.py. Usage: summarize.py -run1 -run2 ...
(several tags are pooled into one table when joined with '+', e.g. -run1+-run2)."""
import json, os, statistics as st, sys

HERE = os.path.dirname(os.path.abspath(__file__))
BUILDS = ("before", "after", "nchan")


def med(xs):
    xs = [x for x in xs if x is not None]
    return round(st.median(xs), 3) if xs else None


def ratio(a, b):
    return f"{a / b:.3f}" if a and b else "–"


for arg in sys.argv[1:]:
    rows = []
    for tag in arg.split("+"):
        rows += [dict(r, round=f"{tag.lstrip('-')}.{r['round']}") for r in json.load(open(os.path.join(HERE, f"rows{tag}.json")))]
    print(f"\n### {arg.lstrip('-')}\n")
    print("| scenario | proto | measurement | build | rate msg/s | clean runs | deliveries/s (median) | server CPU µs/delivery, publish window, per slot | median | whole run, per slot | median | server CPU % in window | ringload CPU µs/delivery | bytes read / delivery | loadavg (1 min) before slots |")
    print("|---|---|---|---|---:|---:|---:|---|---:|---|---:|---:|---:|---:|---|")
    cells, whole = {}, {}
    for scen in ("S1", "S2"):
        for proto in ("h1", "tls"):
            for kind in sorted({r["rate"] for r in rows if r["scenario"] == scen and r["proto"] == proto and r["kind"] != "sweep"}):
                for b in BUILDS:
                    xs = [r for r in rows if r["scenario"] == scen and r["proto"] == proto and r["rate"] == kind and r["kind"] != "sweep" and r["build"] == b]
                    if not xs:
                        continue
                    cl = [r for r in xs if r["clean"]]
                    cpu = med([r["server_cpu_us_per_delivery"] for r in xs])
                    win = med([r.get("window_server_cpu_us_per_delivery") for r in xs])
                    cells[(scen, proto, kind, b)], whole[(scen, proto, kind, b)] = win, cpu
                    print(f"| {scen} | {proto} | fixed | {b} | {xs[0]['rate']:.0f} | {len(cl)}/{len(xs)} | {med([r['deliveries_per_s'] for r in xs]):,.0f} | "
                          f"{', '.join(str(r.get('window_server_cpu_us_per_delivery')) for r in xs)} | **{win}** | "
                          f"{', '.join(str(r['server_cpu_us_per_delivery']) for r in xs)} | {cpu} | {med([r.get('window_server_cpu_pct') for r in xs])} | "
                          f"{med([r['ringload_cpu_us_per_delivery'] for r in xs])} | {med([r['bytes_per_delivery'] for r in xs])} | {' '.join(r['loadavg_before_slot'][0] for r in xs)} |")
    print()
    for scen in ("S1", "S2"):
        for proto in ("h1", "tls"):
            for kind in sorted({k[2] for k in cells if k[:2] == (scen, proto)}):
                b, a, n = (cells.get((scen, proto, kind, x)) for x in BUILDS)
                wb, wa, wn = (whole.get((scen, proto, kind, x)) for x in BUILDS)
                if b and a:
                    pairs = []  # after/before of the two slots of one round (adjacent in time)
                    for rnd in sorted({r["round"] for r in rows}):
                        v = {x: [r.get("window_server_cpu_us_per_delivery") for r in rows if r["scenario"] == scen and r["proto"] == proto
                                 and r["rate"] == kind and r["kind"] != "sweep" and r["build"] == x and r["round"] == rnd] for x in ("before", "after")}
                        if v["before"] and v["after"] and v["before"][0] and v["after"][0]:
                            pairs.append(v["after"][0] / v["before"][0])
                    line = f"- {scen} {proto} {kind:.0f} msg/s: after/before within each round (publish window): median **{med(pairs)}** (n={len(pairs)}, {min(pairs):.3f}–{max(pairs):.3f}); ratio of medians: server CPU/delivery in the publish window after/before **{ratio(a, b)}**"
                    if n:
                        line += f", nchan/after {ratio(n, a)}, nchan/before {ratio(n, b)}"
                    line += f"; whole run after/before {ratio(wa, wb)}" + (f", nchan/after {ratio(wn, wa)}" if wn else "")
                    print(line)
    for scen in ("S1", "S2"):
        for proto in ("h1", "tls"):
            best = {}
            for b in BUILDS:
                per = []
                for rnd in sorted({r["round"] for r in rows if r["scenario"] == scen and r["proto"] == proto and r["build"] == b}):
                    xs = [r for r in rows if r["scenario"] == scen and r["proto"] == proto and r["build"] == b and r["round"] == rnd]
                    if not any(r["kind"] == "sweep" for r in xs):
                        continue
                    ok = [r for r in xs if r["clean"]]
                    top = max(ok, key=lambda r: r["deliveries_per_s"]) if ok else None
                    swept = [r for r in xs if r["kind"] == "sweep"]
                    capped = top is not None and bool(swept) and swept[-1]["clean"]  # the sweep ran out of steps
                    per.append((top["deliveries_per_s"] if top else 0, top["server_cpu_us_per_delivery"] if top else None, capped))
                if per:
                    best[b] = per
            if best:
                print(f"\n{scen} {proto}: highest clean deliveries/s per slot (fixed runs 5 s, sweep steps 3 s, the sweep stops at its first unclean step; ≥ = the sweep's top step was clean):\n")
                for b, per in best.items():
                    print(f"- {b}: {', '.join(('≥' if c else '') + f'{d:,.0f}' for d, _, c in per)} (median {med([d for d, _, _ in per]):,.0f}); server CPU µs/delivery at that step: {[x for _, x, _ in per]}")
                m = {b: med([d for d, _, _ in per]) for b, per in best.items()}
                print(f"- ratios of medians: after/before **{ratio(m.get('after'), m.get('before'))}**" +
                      (f", after/nchan {ratio(m.get('after'), m.get('nchan'))}, before/nchan {ratio(m.get('before'), m.get('nchan'))}" if m.get("nchan") else ""))

    # Every S1 run at each rate, pooled over slots: how often it was clean, per build. A sweep
    # stops at unclean steps, so this counts only rates a slot reached; read it with the counts.
    for proto in ("h1", "tls"):
        xs = [r for r in rows if r["scenario"] == "S1" and r["proto"] == proto]
        rates = sorted({r["rate"] for r in xs})
        if not xs:
            continue
        print(f"\nS1 {proto}: clean runs / runs at each rate (all kinds, pooled):\n")
        print("| rate msg/s | " + " | ".join(b for b in BUILDS if any(r["build"] == b for r in xs)) + " |")
        print("|---:|" + "---:|" * len([b for b in BUILDS if any(r["build"] == b for r in xs)]))
        for rate in rates:
            cells = []
            for b in BUILDS:
                if not any(r["build"] == b for r in xs):
                    continue
                ys = [r for r in xs if r["build"] == b and r["rate"] == rate]
                cells.append(f"{sum(r['clean'] for r in ys)}/{len(ys)}" if ys else "")
            print(f"| {rate:.0f} | " + " | ".join(cells) + " |")
