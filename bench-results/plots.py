#!/usr/bin/env python3
"""Headline plots for bench-results/README.md (issue 9): ringcast beside nginx+nchan in
one run, drawn by ringload itself (`--sweep --json`, `--json`, then `ringload plot`).

- S1 (1000 subscribers, 1 room) and S2 (10000 subscribers, 100 rooms), 100-byte payloads:
  `ringload fanout --sweep` against each server (double from the start rate, then bisect;
  every step checked for loss, duplicates, order and room) → deliveries/s by publish rate.
- Latency by percentile at one rate both serve cleanly (S1 at 50 msg/s and S2 at 100 msg/s,
  10 s): from schedule and from stamp.

Server pinned to CPU 0 (one shard / one nginx worker), ringload pinned to CPU 1 (one thread).

Both servers get the same ringload flags, including `--pub-pipeline 8` (8 publishes in flight
per publisher connection, order kept per room), so the publisher's round trip does not cap
the rate.

Usage: bench-results/plots.py [--out DIR] [--step 5s] [--pub-pipeline 8]
Needs target/release/ringcast, target/release/ringload and ../shared/peers/nchan.sh.
"""
import argparse, json, os, platform, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fanout_bench as fb  # noqa: E402

SCENARIOS = {
    # name: (subscribers, rooms, sweep start rate, latency-plot rate)
    "S1": (1000, 1, 50, 50),
    "S2": (10000, 100, 100, 100),
}


def run_ringload(server, args, out_json, out_svg, log):
    cmd = ["taskset", "-c", "1", fb.RINGLOAD, "fanout",
           "--sub-url", f"http://127.0.0.1:{server.port}/rooms/{{room}}/events",
           "--pub-url", f"http://127.0.0.1:{server.port}/rooms/{{room}}/messages",
           "-t", "1", "-q", "--json", "--plot", out_svg] + args
    shown = " ".join(cmd).replace(str(server.port), "PORT")
    print("  $", shown, flush=True)
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True)
    with open(out_json, "w") as f:
        f.write(out.stdout)
    log.append({"server": server.name, "command": shown, "exit": out.returncode,
                "wall_s": round(time.time() - t0, 1), "stderr": out.stderr[-500:]})
    try:
        return json.loads(out.stdout)
    except json.JSONDecodeError:
        return None


def combine(directory, out, title, inputs):
    """`ringload plot` run inside `directory`, so the plot names its inputs by file name."""
    cmd = [fb.RINGLOAD, "plot", "--out", out, "--title", title] + inputs
    subprocess.run(cmd, check=True, cwd=directory)
    return " ".join(["ringload"] + cmd[1:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(fb.ROOT, "bench-results", "plots"))
    ap.add_argument("--step", default="5s", help="duration of each sweep step")
    ap.add_argument("--scenarios", default="S1,S2")
    ap.add_argument("--pub-pipeline", type=int, default=8,
                    help="publishes in flight per publisher connection (ringload --pub-pipeline)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    log, best = [], {}
    for scen in args.scenarios.split(","):
        subs, rooms, start, lat_rate = SCENARIOS[scen]
        base = ["-s", str(subs), "-r", str(rooms), "--size", "100", "--pub-pipeline", str(args.pub_pipeline)]
        for server in (fb.Ringcast([]), fb.Nchan()):
            server.start()
            print(f"== {server.name} {scen}", flush=True)
            stem = os.path.join(args.out, f"{scen.lower()}-{server.name}")
            sweep = run_ringload(server, base + ["--rate", str(start), "-d", args.step, "--sweep"],
                                 stem + "-sweep.json", stem + "-sweep.svg", log)
            best[f"{scen} {server.name}"] = sweep and sweep.get("best_rate")
            print(f"  best clean rate: {best[f'{scen} {server.name}']}", flush=True)
            run_ringload(server, base + ["--rate", str(lat_rate), "-d", "10s"],
                         stem + "-latency.json", stem + "-latency.svg", log)
            server.stop()
        s = scen.lower()
        log.append({"combine": combine(
            args.out, f"{s}-sweep.svg",
            f"{scen}: {subs} subscribers, {rooms} room(s), 100-byte messages - clean deliveries/s by publish rate",
            [f"{s}-ringcast-sweep.json=ringcast", f"{s}-nchan-sweep.json=nginx+nchan"])})
        log.append({"combine": combine(
            args.out, f"{s}-latency.svg",
            f"{scen} at {lat_rate} msg/s: publish-to-receive latency by percentile",
            [f"{s}-ringcast-latency.json=ringcast", f"{s}-nchan-latency.json=nginx+nchan"])})
    machine = {"nproc": os.cpu_count(), "kernel": platform.release(),
               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "ringcast_commit": subprocess.run(["git", "-C", fb.ROOT, "rev-parse", "--short", "HEAD"],
                                                 capture_output=True, text=True).stdout.strip()}
    with open(os.path.join(args.out, "runs.json"), "w") as f:
        json.dump({"machine": machine, "best_clean_rate": best, "runs": log}, f, indent=1)
    print(json.dumps({"machine": machine, "best_clean_rate": best}, indent=1))


if __name__ == "__main__":
    main()
