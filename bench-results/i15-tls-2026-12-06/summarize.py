#!/usr/bin/env python3
"""Tables from rows<tag>.json written by run.py: per proto, each build's server CPU µs per
delivery (publish window) per round, and each build's ratio to `before` (and fixed/main)
within the same round. Usage: summarize.py -run1 [-run2 ...]; '+' pools runs (-run1+-run2)."""
import json, os, statistics as st, sys

HERE = os.path.dirname(os.path.abspath(__file__))


def med(xs):
    xs = [x for x in xs if x is not None]
    return round(st.median(xs), 3) if xs else None


PAIRS = [("main", "before"), ("fixed", "before"), ("fixed", "main")]
FIGURES = [("window_server_cpu_us_per_delivery", "server CPU µs per delivery, publish window"),
           ("window_server_cpu_us_per_write", "server CPU µs per fan-out write, publish window"),
           ("window_server_user_us_per_write", "server user-space CPU µs per fan-out write, publish window")]

def table(xs, builds, rounds, proto, key, title):
    other = "server_cpu_us_per_delivery" if key == "window_server_cpu_us_per_delivery" else "window_writes_per_delivery"
    print(f"**S1 {proto}, {xs[0]['rate']:.0f} msg/s: {title}** "
          f"({'whole run' if other == 'server_cpu_us_per_delivery' else 'writes per delivery'} in brackets; load = 1-min load average before the slot)\n")
    pairs = [p for p in PAIRS if p[0] in builds and p[1] in builds]
    print("| round | " + " | ".join(builds) + " | " + " | ".join(f"{a}/{b}" for a, b in pairs) + " | load before slots | clean |")
    print("|---|" + "---:|" * (len(builds) + len(pairs)) + "---|---|")
    ratios = {p: [] for p in pairs}
    for rnd in rounds:
        v, w, load, clean = {}, {}, [], []
        for b in builds:
            ys = [r for r in xs if r["round"] == rnd and r["build"] == b]
            if ys:
                v[b], w[b] = ys[0].get(key), ys[0].get(other)
                load.append(ys[0]["loadavg_before_slot"][0])
                clean.append("y" if ys[0]["clean"] else "N")
        if not v:
            continue
        cells = [f"{v[b]} ({w[b]})" if b in v else "" for b in builds]
        rc = []
        for p in pairs:
            if v.get(p[0]) and v.get(p[1]):
                ratio = v[p[0]] / v[p[1]]
                ratios[p].append(ratio)
                rc.append(f"{ratio:.3f}")
            else:
                rc.append("")
        print(f"| {rnd} | " + " | ".join(cells) + " | " + " | ".join(rc) + f" | {' '.join(load)} | {''.join(clean)} |")
    meds = [f"**{med([r.get(key) for r in xs if r['build'] == b])}**" for b in builds]
    mr = [f"**{med(ratios[p])}** ({min(ratios[p]):.3f}–{max(ratios[p]):.3f})" if ratios[p] else "" for p in pairs]
    print("| median (range) | " + " | ".join(meds) + " | " + " | ".join(mr) + " | | |")
    print()
    for p in pairs:
        rs = sorted(ratios[p])
        if not rs:
            continue
        a, b = p
        mb = med([r.get(key) for r in xs if r['build'] == b])
        ma = med([r.get(key) for r in xs if r['build'] == a])
        print(f"- {proto} {a}/{b} ({key}): same-round median **{med(rs)}**, n={len(rs)}, range {rs[0]:.3f}–{rs[-1]:.3f}, "
              f"{sum(r > 1.05 for r in rs)} of {len(rs)} rounds over 1.05; ratio of medians {ma / mb:.3f}")
    print()


def main():
    for arg in sys.argv[1:]:
        rows = []
        for tag in arg.split("+"):
            rows += [dict(r, round=f"{tag.lstrip('-')}.{r['round']}") for r in json.load(open(os.path.join(HERE, f"rows{tag}.json")))]
        builds = list(dict.fromkeys(r["build"] for r in rows))
        rounds = list(dict.fromkeys(r["round"] for r in rows))
        print(f"\n### {arg.lstrip('-')}\n")
        for key, title in FIGURES:
            for proto in ("tls", "h1"):
                xs = [r for r in rows if r["proto"] == proto and r.get(key) is not None]
                if not xs:
                    continue
                table(xs, builds, rounds, proto, key, title)


if __name__ == "__main__":
    main()
