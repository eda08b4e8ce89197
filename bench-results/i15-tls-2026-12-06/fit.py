#!/usr/bin/env python3
"""Server CPU per delivery against writes per delivery, per build (least squares over the
slots of the given runs): CPU/delivery = a × writes/delivery + b. At 80 msg/s the loaded
load generator shifts how many messages a write carries from slot to slot; the fit compares
the builds at the same writes per delivery (0.6, the issue-15 runs' typical value, and 1.0,
one write per message), with a bootstrap over slots for the spread.
Usage: fit.py -run3 [-run4 ...] (pooled)."""
import json, os, random, sys

HERE = os.path.dirname(os.path.abspath(__file__))


def fit(points):
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    a = sum((x - mx) * (y - my) for x, y in points) / sxx
    return a, my - a * mx


def main():
    rows = []
    for tag in sys.argv[1:]:
        rows += json.load(open(os.path.join(HERE, f"rows{tag}.json")))
    rows = [r for r in rows if r.get("window_writes_per_delivery") and r.get("window_server_cpu_us_per_delivery")]
    random.seed(1)
    for proto in ("tls", "h1"):
        print(f"\n{proto} ({' '.join(t.lstrip('-') for t in sys.argv[1:])}): CPU µs/delivery = a × writes/delivery + b\n")
        print("| build | slots | a (µs per write) | b (µs per delivery) | at 0.6 writes/delivery | at 1.0 |")
        print("|---|---:|---:|---:|---:|---:|")
        boots = {}
        for build in ("before", "main", "fixed"):
            pts = [(r["window_writes_per_delivery"], r["window_server_cpu_us_per_delivery"]) for r in rows if r["proto"] == proto and r["build"] == build]
            if len(pts) < 3:
                continue
            a, b = fit(pts)
            boots[build] = []
            for _ in range(2000):
                sample = [random.choice(pts) for _ in pts]
                if len({x for x, _ in sample}) > 1:
                    sa, sb = fit(sample)
                    boots[build].append((sa * 0.6 + sb, sa + sb))
            print(f"| {build} | {len(pts)} | {a:.2f} | {b:.2f} | {a * 0.6 + b:.2f} | {a + b:.2f} |")
        for x, idx in ((0.6, 0), (1.0, 1)):
            for num, den in (("main", "before"), ("fixed", "before"), ("fixed", "main")):
                if num in boots and den in boots:
                    ratios = sorted(p[idx] / q[idx] for p, q in zip(boots[num], boots[den]))
                    lo, mid, hi = ratios[len(ratios) // 20], ratios[len(ratios) // 2], ratios[-len(ratios) // 20]
                    print(f"- at {x} writes/delivery, {num}/{den}: {mid:.3f} (bootstrap 90 %: {lo:.3f}–{hi:.3f})")


if __name__ == "__main__":
    main()
