#!/usr/bin/env python3
"""Cost of the operability wiring on S1 (issue 5): ringcast with per-delivery latency
metrics (default) vs `--no-latency-metrics`, in one run, alternating the two builds' flags
run by run so both see the same machine noise. For each publish rate: clean or not,
delivered, server CPU µs per delivery (from /proc/PID/stat). Also the highest clean rate of
each configuration by the same search as fanout_bench.py.

Usage: bench-results/metrics_cost.py [--out DIR] [--rounds N] [--rates 800,900,1000,1100]
"""
import argparse, json, os, statistics, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fanout_bench as fb  # noqa: E402

CONFIGS = {"metrics-on": [], "metrics-off": ["--no-latency-metrics"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(fb.ROOT, "bench-results", "metrics-cost-" + time.strftime("%Y%m%d-%H%M%S")))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rates", default="800,900,1000,1100")
    ap.add_argument("--duration", default="5s")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    log, rows = [], []
    for rate in [int(r) for r in args.rates.split(",")]:
        for rnd in range(args.rounds):
            for name, extra in CONFIGS.items():
                server = fb.Ringcast(extra)
                server.name = name
                server.start()
                r = fb.ringload(server, ["-s", "1000", "-r", "1", "--rate", str(rate), "-d", args.duration], log)
                server.stop()
                s = fb.summary(r)
                rows.append({"config": name, "rate": rate, "round": rnd, **s, "delivered": r.get("delivered")})
                print(f"{name:12} rate {rate} round {rnd}: clean={s['clean']} cpu/delivery={s['server_cpu_us_per_delivery']} us p50={s['stamp_p50_ms']} ms", flush=True)
    table = {}
    for name in CONFIGS:
        for rate in sorted({r["rate"] for r in rows}):
            sel = [r for r in rows if r["config"] == name and r["rate"] == rate]
            table.setdefault(name, {})[rate] = {
                "clean_runs": sum(r["clean"] for r in sel), "runs": len(sel),
                "median_server_cpu_us_per_delivery": statistics.median(r["server_cpu_us_per_delivery"] for r in sel),
            }
    summary = {"rows": rows, "table": table}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(args.out, "raw-runs.json"), "w") as f:
        json.dump(log, f, indent=1)
    print(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
