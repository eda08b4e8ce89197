#!/usr/bin/env python3
"""Tables from rows<tag>.json written by run.py. Usage: summarize.py -run2 [-run3 ...]
(tags joined with '+' are pooled into one table: -run2+-run3)."""
import json, os, statistics as st, sys

HERE = os.path.dirname(os.path.abspath(__file__))
ORDER = ("rc-ws", "base-ws", "rc-ws-ping", "rc-ws-thp", "uws", "rc-sse", "base-sse", "rc-sse-thp", "nchan")


def med(xs):
    xs = [x for x in xs if x is not None]
    return round(st.median(xs), 3) if xs else None


def fmt(x, nd=0):
    return "–" if x is None else f"{x:,.{nd}f}"


def ceiling(rows, scen, server, rnd):
    """Highest clean deliveries/s of one slot (fixed runs with HTTP publishing and sweep steps)."""
    xs = [r for r in rows if r["scenario"] == scen and r["server"] == server and r["round"] == rnd
          and r["kind"] in ("fixed", "sweep") and r["clean"]]
    return max((r["deliveries_per_s"] for r in xs), default=0) if any(
        r["scenario"] == scen and r["server"] == server and r["round"] == rnd for r in rows) else None


def main():
    for arg in sys.argv[1:]:
        rows = []
        for tag in arg.split("+"):
            rows += [dict(r, round=f"{tag.lstrip('-')}.{r['round']}") for r in json.load(open(os.path.join(HERE, f"rows{tag}.json")))]
        rounds = sorted({r["round"] for r in rows})
        servers = [s for s in ORDER if any(r["server"] == s for r in rows)]
        print(f"\n### {arg.lstrip('-')}\n")
        print("**Highest clean deliveries/s per slot** (fixed and sweep steps; 0 = no clean step), and the ratio within each round\n")
        print("| scenario | round | " + " | ".join(servers) + " | rc-ws/uws | load (1 min) before each slot |")
        print("|---|---|" + "---:|" * len(servers) + "---:|---|")
        for scen in ("S1", "S2"):
            ratios, per = [], {s: [] for s in servers}
            for rnd in rounds:
                c = {s: ceiling(rows, scen, s, rnd) for s in servers}
                if all(v is None for v in c.values()):
                    continue
                for s in servers:
                    if c[s] is not None:
                        per[s].append(c[s])
                ratio = c.get("rc-ws") / c["uws"] if c.get("rc-ws") is not None and c.get("uws") else None
                if ratio is not None:
                    ratios.append(ratio)
                loads = " ".join(f"{s} {xs[0]['loadavg_before_slot'][0]}" for s in servers
                                 for xs in [[r for r in rows if r["scenario"] == scen and r["server"] == s and r["round"] == rnd]] if xs)
                print(f"| {scen} | {rnd} | " + " | ".join(fmt(c[s]) for s in servers) + f" | {fmt(ratio, 2)} | {loads} |")
            if any(per.values()):
                print(f"| {scen} | **median** | " + " | ".join(f"**{fmt(med(per[s]))}**" for s in servers) +
                      f" | **{fmt(med(ratios), 2)}** (n={len(ratios)}{', ' + fmt(min(ratios), 2) + '–' + fmt(max(ratios), 2) if ratios else ''}) | |")
        print("\n**Fixed rates**: clean runs, deliveries/s, server CPU µs per delivery in the publish window (per slot, median), server CPU % in the window\n")
        print("| scenario | server | publish | rate msg/s | clean | deliveries/s (median) | µs/delivery per slot | median | CPU % (median) | p99 from schedule ms (median) | ringload µs/delivery | loads |")
        print("|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---|")
        for scen in ("S1", "S2"):
            for rate in sorted({r["rate"] for r in rows if r["scenario"] == scen and r["kind"].startswith("fixed")}):
                for s in servers:
                    for pub in ("http", "ws"):
                        xs = [r for r in rows if r["scenario"] == scen and r["server"] == s and r["rate"] == rate
                              and r["kind"].startswith("fixed") and r.get("publish_over", "http") == pub]
                        if not xs:
                            continue
                        print(f"| {scen} | {s} | {pub} | {rate:.0f} | {sum(r['clean'] for r in xs)}/{len(xs)} | {fmt(med([r['deliveries_per_s'] for r in xs]))} | "
                              f"{', '.join(str(r['window_server_cpu_us_per_delivery']) for r in xs)} | **{med([r['window_server_cpu_us_per_delivery'] for r in xs])}** | "
                              f"{med([r['window_server_cpu_pct'] for r in xs])} | {med([r['schedule_p99_ms'] for r in xs])} | "
                              f"{med([r['ringload_cpu_us_per_delivery'] for r in xs])} | {' '.join(r['loadavg_before_slot'][0] for r in xs)} |")
        # Same-round CPU ratios at the fixed rates
        pairs = (("uws", "rc-ws"), ("nchan", "rc-sse"), ("rc-sse", "base-sse"), ("rc-ws", "base-ws"),
                 ("rc-ws", "rc-ws-thp"), ("rc-sse", "rc-sse-thp"))
        lines = []
        for scen in ("S1", "S2"):
            for rate in sorted({r["rate"] for r in rows if r["scenario"] == scen and r["kind"] == "fixed"}):
                for num, den in pairs:
                    q = []
                    for rnd in rounds:
                        v = {x: [r["window_server_cpu_us_per_delivery"] for r in rows if r["scenario"] == scen and r["server"] == x
                                 and r["rate"] == rate and r["kind"] == "fixed" and r["round"] == rnd and r["clean"]] for x in (num, den)}
                        if v[num] and v[den] and v[num][0] and v[den][0]:
                            q.append(v[num][0] / v[den][0])
                    if q:
                        lines.append(f"- {scen} {rate:.0f} msg/s, clean runs only: {num}/{den} server CPU per delivery, same round: median **{med(q):.2f}** (n={len(q)}, {min(q):.2f}–{max(q):.2f})")
        if lines:
            print("\n" + "\n".join(lines))
        idle = [r for r in rows if r["scenario"] == "S3"]
        if idle:
            print("\n**S3/S4: 10,000 idle connections** (RSS of the server's processes after a 4-s settle, then peak while held and plateau = median of the last 3 s held)\n")
            print("| server | round | connected | S4 connect time s | RSS before kB | RSS held peak kB | **B per connection, peak** | **B per connection, plateau** | load |")
            print("|---|---|---:|---:|---:|---:|---:|---:|---|")
            for s in servers:
                xs = [r for r in idle if r["server"] == s]
                for r in xs:
                    print(f"| {s} | {r['round']} | {r['connected']} | {r['connect_time_s']:.2f} | {r['rss_before_kb']} | {r['rss_held_peak_kb']} | {r['rss_per_connection_bytes']} | {r.get('rss_plateau_per_connection_bytes')} | {r['loadavg_before_slot'][0]} |")
                if xs:
                    print(f"| {s} | **median** | | **{med([r['connect_time_s'] for r in xs]):.2f}** | | | **{med([r['rss_per_connection_bytes'] for r in xs])}** | **{med([r.get('rss_plateau_per_connection_bytes') or 0 for r in xs])}** | |")


if __name__ == "__main__":
    main()
