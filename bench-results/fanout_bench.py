#!/usr/bin/env python3
"""Scenarios S1-S4 of DESIGN.md §6 for ringcast and nginx+nchan, in one run.

Server pinned to CPU 0, ringload pinned to CPU 1 (one thread), loopback, 100-byte
payloads. For S1/S2 the highest clean rate is found by doubling then bisecting with short
runs, then confirmed with a full-length run (stepping down 5% until clean). Server CPU is
read from /proc/PID/stat around each run; RSS from /proc/PID/status.

Usage: bench-results/fanout_bench.py [--out DIR] [--quick] [--only ringcast|nchan] [--scenarios S1,S2,S3,S4,P50]
Needs: target/release/ringcast and target/release/ringload built; nginx + nchan installed
(../shared/peers/nchan.sh install).
"""
import argparse, json, os, platform, signal, socket, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.path.join(os.path.dirname(ROOT), "shared", "peers")
RINGCAST = os.path.join(ROOT, "target", "release", "ringcast")
RINGLOAD = os.path.join(ROOT, "target", "release", "ringload")
HZ = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / HZ
        except FileNotFoundError:
            pass
    return total


def rss_kb(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


class Ringcast:
    name = "ringcast"

    def __init__(self, extra):
        self.extra = extra

    def start(self):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["taskset", "-c", "0", RINGCAST, "--listen", f"127.0.0.1:{self.port}", "--shards", "1", "--log", "warn"] + self.extra,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        self.pids = [self.proc.pid]
        self.command = f"taskset -c 0 ringcast --listen 127.0.0.1:PORT --shards 1 {' '.join(self.extra)}".strip()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Nchan:
    name = "nchan"

    def start(self):
        self.port = free_port()
        env = dict(os.environ, NCHAN_PORT=str(self.port), SERVER_CPU="0", NCHAN_RUNDIR=f"/tmp/ringcast-bench-nchan-{self.port}")
        subprocess.run([os.path.join(PEERS, "nchan.sh"), "start"], env=env, check=True, stdout=subprocess.DEVNULL)
        self.env = env
        wait_port(self.port)
        master = int(open(os.path.join(env["NCHAN_RUNDIR"], "nginx.pid")).read())
        children = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split()
        self.pids = [master] + [int(c) for c in children]
        self.command = "SERVER_CPU=0 ../shared/peers/nchan.sh start (1 worker, 16-message buffer)"

    def stop(self):
        subprocess.run([os.path.join(PEERS, "nchan.sh"), "stop"], env=self.env, stdout=subprocess.DEVNULL)
        time.sleep(0.5)


def wait_port(port):
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"server on port {port} did not start")


def ringload(server, args, log):
    cmd = ["taskset", "-c", "1", RINGLOAD, "fanout",
           "--sub-url", f"http://127.0.0.1:{server.port}/rooms/{{room}}/events",
           "--pub-url", f"http://127.0.0.1:{server.port}/rooms/{{room}}/messages",
           "-t", "1", "-q", "--json"] + args
    cpu0 = cpu_seconds(server.pids)
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    cpu1 = cpu_seconds(server.pids)
    try:
        result = json.loads(out.stdout)
    except json.JSONDecodeError:
        result = {"verdict": {"clean": False, "reasons": [f"ringload exit {out.returncode}: {out.stderr.strip()[:300]}"]}}
    result["server_cpu_s"] = cpu1 - cpu0
    result["wall_s"] = wall
    shown = " ".join(a if " " not in a else repr(a) for a in cmd).replace(str(server.port), "PORT")
    log.append({"server": server.name, "command": shown, "result": result})
    return result


def clean(result):
    return result.get("verdict", {}).get("clean", False)


def summary(result):
    lat = result.get("latency_from_stamp", {})
    sched = result.get("latency_from_schedule", {})
    dur = result.get("duration_s", 1) or 1
    return {
        "rate": result.get("rate"),
        "clean": clean(result),
        "reasons": result.get("verdict", {}).get("reasons", []),
        "deliveries_per_s": result.get("deliveries_per_s"),
        "stamp_p50_ms": lat.get("p50_ms"), "stamp_p99_ms": lat.get("p99_ms"),
        "schedule_p50_ms": sched.get("p50_ms"), "schedule_p99_ms": sched.get("p99_ms"),
        "server_cpu_pct": round(100 * result["server_cpu_s"] / (result["wall_s"] or 1), 1),
        "server_cpu_us_per_delivery": round(1e6 * result["server_cpu_s"] / max(result.get("delivered", 0) or 1, 1), 3),
    }


def highest_clean(server, subs, rooms, start_rate, log, quick):
    short, full = ("3s", "5s") if quick else ("5s", "10s")
    base = ["-s", str(subs), "-r", str(rooms), "--size", "100"]
    rate, good, bad = start_rate, None, None
    while True:  # double until not clean
        r = ringload(server, base + ["--rate", str(rate), "-d", short], log)
        print(f"  {server.name} {subs}x{rooms} rate {rate}: {'clean' if clean(r) else 'NOT clean ' + str(r['verdict']['reasons'][:2])}", flush=True)
        if clean(r):
            good = rate
            rate *= 2
            if rate > 200_000:
                break
        else:
            bad = rate
            break
    if good is None:
        return None
    steps = 3 if quick else 5
    while bad is not None and steps > 0 and (bad - good) / good > 0.05:
        mid = int((good + bad) / 2)
        r = ringload(server, base + ["--rate", str(mid), "-d", short], log)
        print(f"  {server.name} {subs}x{rooms} rate {mid}: {'clean' if clean(r) else 'NOT clean ' + str(r['verdict']['reasons'][:2])}", flush=True)
        if clean(r):
            good = mid
        else:
            bad = mid
        steps -= 1
    rate = good
    for _ in range(6):  # confirm at full length
        r = ringload(server, base + ["--rate", str(rate), "-d", full], log)
        print(f"  {server.name} {subs}x{rooms} confirm rate {rate} ({full}): {'clean' if clean(r) else 'NOT clean'}", flush=True)
        if clean(r):
            return summary(r)
        rate = int(rate * 0.95)
    return None


def idle(server, subs, log, hold="5s"):
    before = rss_kb(server.pids)
    args = ["-s", str(subs), "-r", "100", "--idle", "--hold", hold, "--src-ips", "4"]
    # Measure RSS while the subscribers are held.
    cmd_server = server
    import threading
    peak = {"rss": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], rss_kb(cmd_server.pids))
            time.sleep(0.2)
    t = threading.Thread(target=sample)
    t.start()
    r = ringload(server, args, log)
    stop.set()
    t.join()
    return {
        "subscribers": subs,
        "connected": r.get("subscribers_connected"),
        "connect_time_s": r.get("connect_time_s"),
        "rss_before_kb": before,
        "rss_held_kb": peak["rss"],
        "rss_per_subscriber_bytes": round(1024 * (peak["rss"] - before) / subs, 1),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-results", "fanout-" + time.strftime("%Y%m%d-%H%M%S")))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only")
    ap.add_argument("--scenarios", default="S1,S2,S3,S4,P50")
    ap.add_argument("--ringcast-args", default="")
    args = ap.parse_args()
    scen = set(args.scenarios.split(","))
    os.makedirs(args.out, exist_ok=True)
    machine = {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "ringcast_commit": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
    }
    servers = [Ringcast(args.ringcast_args.split()), Nchan()]
    if args.only:
        servers = [s for s in servers if s.name == args.only]
    log, results = [], {s.name: {} for s in servers}
    for server in servers:
        print(f"== {server.name}", flush=True)
        if "P50" in scen:
            server.start()
            r = ringload(server, ["-s", "1000", "-r", "1", "--rate", "50", "-d", "10s"], log)
            results[server.name]["S1_at_50_msgs"] = summary(r)
            print(f"  {server.name} S1 at 50 msg/s: {results[server.name]['S1_at_50_msgs']}", flush=True)
            server.stop()
        if "S1" in scen:
            server.start()
            results[server.name]["S1"] = highest_clean(server, 1000, 1, 50, log, args.quick)
            server.command_used = server.command
            server.stop()
        if "S2" in scen:
            server.start()
            results[server.name]["S2"] = highest_clean(server, 10000, 100, 400, log, args.quick)
            server.stop()
        if "S3" in scen or "S4" in scen:
            server.start()
            results[server.name]["S3_S4"] = idle(server, 10000, log)
            print(f"  {server.name} S3/S4: {results[server.name]['S3_S4']}", flush=True)
            server.stop()
        results[server.name]["server_command"] = server.command
    ratios = {}
    if "ringcast" in results and "nchan" in results:
        rc, nc = results["ringcast"], results["nchan"]
        for s in ("S1", "S2"):
            if rc.get(s) and nc.get(s):
                ratios[f"{s}_deliveries_ratio"] = round(rc[s]["deliveries_per_s"] / nc[s]["deliveries_per_s"], 2)
        if rc.get("S1_at_50_msgs") and nc.get("S1_at_50_msgs"):
            ratios["S1_p50_at_50_ms"] = [rc["S1_at_50_msgs"]["stamp_p50_ms"], nc["S1_at_50_msgs"]["stamp_p50_ms"]]
        if rc.get("S3_S4") and nc.get("S3_S4"):
            ratios["S3_rss_per_sub_bytes"] = [rc["S3_S4"]["rss_per_subscriber_bytes"], nc["S3_S4"]["rss_per_subscriber_bytes"]]
            ratios["S4_connect_10k_s"] = [rc["S3_S4"]["connect_time_s"], nc["S3_S4"]["connect_time_s"]]
    report = {"machine": machine, "results": results, "ratios_ringcast_vs_nchan": ratios}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, "raw-runs.json"), "w") as f:
        json.dump(log, f, indent=1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
