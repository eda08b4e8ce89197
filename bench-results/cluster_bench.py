#!/usr/bin/env python3
"""Cluster mode (issue 7, docs/CLUSTER.md) beside one node, in one run.

Layout: one redis-server (`--save '' --appendonly no`) and ringcast nodes (`--shards 1`),
ALL pinned to CPU 0; ringload (one thread) pinned to CPU 1. The whole "cluster" shares one
core, so absolute figures say little: the ratios within the run and the CPU costs per
publish / per delivery / per node are what count.

Parts:
  1. S1 (1000 subscribers, 1 room) and S2 (10000 subscribers, 100 rooms), each as
     - single: one ringcast node, no Redis; subscribe and publish on it;
     - cluster: nodes A, B, C with --cluster-redis; publishes on A, each room's subscribers
       split evenly over B and C (ringload with a repeated --sub-url);
     highest clean rate (double, bisect, confirm at full length), then the single node at
     the cluster's highest clean rate (same load), then both at 50 msg/s (light-load latency).
     Per run: deliveries/s, publish->receive (stamp) p50/p99, Redis CPU (/proc/PID/task/*/schedstat,
     ns precision; the /proc/PID/stat tick figure is kept beside it) per
     1000 publishes and per delivery, every node's CPU and its follower thread's CPU, Redis
     INFO commandstats (XADD / XREAD calls and in-command usec).
  2. nodes: what one Redis pays per following node. Redis + publishing node A + K follower
     nodes (K = 1, 2, 4, 8), one subscriber per room per follower node, fixed publish rates,
     1 and 100 rooms. Redis CPU/s against K: intercept ~ the XADD side, slope = one node's
     XREAD side.

Usage: bench-results/cluster_bench.py [--out DIR] [--quick] [--parts s1,s2,nodes]
Needs: target/release/ringcast and target/release/ringload (with repeated --sub-url),
redis-server and redis-cli on PATH.
"""
import argparse, json, os, platform, signal, subprocess, sys, time, urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from fanout_bench import free_port, cpu_seconds, wait_port  # noqa: E402

ROOT = os.path.dirname(HERE)
RINGCAST = os.path.join(ROOT, "target", "release", "ringcast")
RINGLOAD = os.path.join(ROOT, "target", "release", "ringload")
HZ = os.sysconf("SC_CLK_TCK")
SERVER_CPU, LOAD_CPU = "0", "1"


def sched_seconds(pid, prefix=""):
    """CPU seconds (ns precision, /proc/PID/task/TID/schedstat) of PID's threads whose name
    starts with PREFIX; /proc/PID/stat ticks (10 ms) are too coarse for Redis's share."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return 0.0
    for tid in tids:
        try:
            if prefix:
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    if not f.read().startswith(prefix):
                        continue
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1e9


class Redis:
    def start(self):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["taskset", "-c", SERVER_CPU, "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            if self.cli("PING").strip() == "PONG":
                break
            time.sleep(0.05)
        else:
            raise SystemExit("redis-server did not start")
        self.url = f"redis://127.0.0.1:{self.port}"
        self.command = f"taskset -c {SERVER_CPU} redis-server --port P --bind 127.0.0.1 --save '' --appendonly no"

    def cli(self, *args):
        return subprocess.run(["redis-cli", "-p", str(self.port)] + list(args), capture_output=True, text=True).stdout

    def commandstats(self):
        stats = {}
        for line in self.cli("INFO", "commandstats").splitlines():
            if line.startswith("cmdstat_"):
                name, rest = line[len("cmdstat_"):].split(":", 1)
                fields = dict(kv.split("=") for kv in rest.split(","))
                stats[name] = {"calls": int(fields["calls"]), "usec": int(fields["usec"])}
        return stats

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Node:
    def __init__(self, name, redis=None):
        self.name, self.redis = name, redis

    def start(self):
        self.port = free_port()
        extra = ["--cluster-redis", self.redis.url, "--node-id", self.name] if self.redis else []
        self.proc = subprocess.Popen(
            ["taskset", "-c", SERVER_CPU, RINGCAST, "--listen", f"127.0.0.1:{self.port}", "--shards", "1",
             "--log", "warn"] + extra,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        for _ in range(100):
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1).status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        self.command = (f"taskset -c {SERVER_CPU} ringcast --listen 127.0.0.1:PORT --shards 1 --log warn"
                        + (f" --cluster-redis redis://127.0.0.1:P --node-id {self.name}" if self.redis else ""))

    def metric(self, name):
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2).read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None

    def url(self, kind):
        return f"http://127.0.0.1:{self.port}/rooms/{{room}}/{kind}"

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Setup:
    """A single node (redis None, pub = the node, subs = [the node]) or a cluster."""

    def __init__(self, mode, followers=2):
        self.mode = mode
        if mode == "single":
            self.redis = None
            self.pub = Node("single")
            self.subs = [self.pub]
        else:
            self.redis = Redis()
            self.pub = Node("A", None)
            self.subs = [Node(chr(ord("B") + i)) for i in range(followers)]
        self.nodes = [self.pub] + [n for n in self.subs if n is not self.pub]

    def start(self):
        if self.redis:
            self.redis.start()
            for node in self.nodes:
                node.redis = self.redis
        for node in self.nodes:
            node.start()

    def stop(self):
        for node in self.nodes:
            node.stop()
        if self.redis:
            self.redis.stop()
        time.sleep(0.3)


def measure(setup, subs, rooms, rate, duration, log, label, prefix="r"):
    cmd = ["taskset", "-c", LOAD_CPU, RINGLOAD, "fanout"]
    for node in setup.subs:
        cmd += ["--sub-url", node.url("events")]
    cmd += ["--pub-url", setup.pub.url("messages"), "-t", "1", "-q", "--json",
            "-s", str(subs), "-r", str(rooms), "--room-prefix", prefix, "--size", "100",
            "--rate", str(rate), "-d", duration]
    pids = {n.name: n.proc.pid for n in setup.nodes}
    node_cpu0 = {k: sched_seconds(p) for k, p in pids.items()}
    node_stat0 = {k: cpu_seconds([p]) for k, p in pids.items()}
    follow0 = {n.name: sched_seconds(n.proc.pid, "redis-follow") for n in setup.subs if setup.redis}
    pubthr0 = sched_seconds(setup.pub.proc.pid, "redis-pub") if setup.redis else 0.0
    entries0 = {n.name: n.metric("ringcast_cluster_entries_read_total") or 0 for n in setup.subs if setup.redis}
    if setup.redis:
        setup.redis.cli("CONFIG", "RESETSTAT")
        redis0 = sched_seconds(setup.redis.proc.pid)
        redis_stat0 = cpu_seconds([setup.redis.proc.pid])
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    node_cpu = {k: sched_seconds(p) - node_cpu0[k] for k, p in pids.items()}
    node_stat = {k: cpu_seconds([p]) - node_stat0[k] for k, p in pids.items()}
    try:
        result = json.loads(out.stdout)
    except json.JSONDecodeError:
        result = {"verdict": {"clean": False, "reasons": [f"ringload exit {out.returncode}: {out.stderr.strip()[:300]}"]}}
    extra = {"wall_s": wall, "node_cpu_s": node_cpu, "node_cpu_s_proc_stat": node_stat}
    if setup.redis:
        extra["redis_cpu_s"] = sched_seconds(setup.redis.proc.pid) - redis0
        extra["redis_cpu_s_proc_stat"] = cpu_seconds([setup.redis.proc.pid]) - redis_stat0
        extra["redis_commandstats"] = setup.redis.commandstats()
        extra["follower_cpu_s"] = {n.name: sched_seconds(n.proc.pid, "redis-follow") - follow0[n.name] for n in setup.subs}
        extra["publisher_threads_cpu_s"] = sched_seconds(setup.pub.proc.pid, "redis-pub") - pubthr0
        extra["entries_read"] = {n.name: (n.metric("ringcast_cluster_entries_read_total") or 0) - entries0[n.name] for n in setup.subs}
    result["bench"] = extra
    ports = {str(n.port): f"<{n.name}>" for n in setup.nodes}
    shown = " ".join(a if " " not in a else repr(a) for a in cmd)
    for port, name in ports.items():
        shown = shown.replace(f"127.0.0.1:{port}", name)
    log.append({"label": label, "mode": setup.mode, "command": shown, "result": result})
    return result


def clean(result):
    return result.get("verdict", {}).get("clean", False)


def summary(result):
    b = result.get("bench", {})
    lat = result.get("latency_from_stamp", {})
    sched = result.get("latency_from_schedule", {})
    resp = result.get("publish_response_time", {})
    ok = (result.get("published") or {}).get("ok", 0) or 0
    delivered = result.get("delivered", 0) or 0
    wall = b.get("wall_s", 1) or 1
    nodes_cpu = sum(b.get("node_cpu_s", {}).values())
    s = {
        "rate": result.get("rate"),
        "clean": clean(result),
        "reasons": result.get("verdict", {}).get("reasons", []),
        "published_ok": ok,
        "delivered": delivered,
        "deliveries_per_s": result.get("deliveries_per_s"),
        "stamp_p50_ms": lat.get("p50_ms"), "stamp_p99_ms": lat.get("p99_ms"),
        "schedule_p50_ms": sched.get("p50_ms"), "schedule_p99_ms": sched.get("p99_ms"),
        "publish_response_p50_ms": resp.get("p50_ms"), "publish_response_p99_ms": resp.get("p99_ms"),
        "wall_s": round(wall, 2),
        "ringcast_cpu_s": {k: round(v, 2) for k, v in b.get("node_cpu_s", {}).items()},
        "ringcast_cpu_us_per_delivery": round(1e6 * nodes_cpu / max(delivered, 1), 3),
        "ringload_cpu_s": result.get("cpu_s"),
    }
    if "redis_cpu_s" in b:
        rc = b["redis_cpu_s"]
        st = b["redis_commandstats"]
        xadd, xread = st.get("xadd", {}), st.get("xread", {})
        entries = b.get("entries_read", {})
        follow = b.get("follower_cpu_s", {})
        s.update({
            "redis_cpu_s": round(rc, 3),
            "redis_cpu_s_proc_stat": round(b.get("redis_cpu_s_proc_stat", 0), 2),
            "redis_cpu_pct_of_wall": round(100 * rc / wall, 1),
            "redis_cpu_ms_per_1000_publishes": round(1e6 * rc / max(ok, 1), 2),
            "redis_cpu_us_per_delivery": round(1e6 * rc / max(delivered, 1), 4),
            "redis_cpu_us_per_publish": round(1e6 * rc / max(ok, 1), 2),
            "xadd_calls": xadd.get("calls"), "xadd_usec_per_call": round(xadd["usec"] / xadd["calls"], 2) if xadd.get("calls") else None,
            "xread_calls": xread.get("calls"), "xread_usec_per_call": round(xread["usec"] / xread["calls"], 2) if xread.get("calls") else None,
            "entries_per_xread": round(sum(entries.values()) / xread["calls"], 1) if xread.get("calls") else None,
            "follower_cpu_s": {k: round(v, 3) for k, v in follow.items()},
            "follower_us_per_entry": {k: round(1e6 * follow[k] / entries[k], 3) if entries.get(k) else None for k in follow},
            "entries_read": entries,
            "publisher_threads_cpu_s": round(b.get("publisher_threads_cpu_s", 0), 3),
            "all_cpu0_us_per_delivery": round(1e6 * (nodes_cpu + rc) / max(delivered, 1), 3),
        })
    else:
        s["all_cpu0_us_per_delivery"] = s["ringcast_cpu_us_per_delivery"]
    return s


def show(tag, rate, r):
    reasons = r.get("verdict", {}).get("reasons", [])
    lat = r.get("latency_from_stamp", {})
    print(f"  {tag} rate {rate}: {'clean' if clean(r) else 'NOT clean ' + str(reasons[:2])}"
          f"  deliv/s {r.get('deliveries_per_s', 0):.0f} stamp p50/p99 {lat.get('p50_ms')}/{lat.get('p99_ms')}"
          f"  redis cpu {r.get('bench', {}).get('redis_cpu_s', '-')}", flush=True)


def highest_clean(setup, subs, rooms, start_rate, log, quick, tag):
    short, full = ("3s", "5s") if quick else ("5s", "10s")
    rate, good, bad = start_rate, None, None
    while True:
        r = measure(setup, subs, rooms, rate, short, log, f"{tag} search")
        show(tag, rate, r)
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
        r = measure(setup, subs, rooms, mid, short, log, f"{tag} search")
        show(tag, mid, r)
        if clean(r):
            good = mid
        else:
            bad = mid
        steps -= 1
    rate = good
    for _ in range(6):
        r = measure(setup, subs, rooms, rate, full, log, f"{tag} confirm")
        show(tag + " confirm", rate, r)
        if clean(r):
            return summary(r)
        rate = int(rate * 0.95)
    return None


def scenario(name, subs, rooms, start_rate, log, quick):
    full = "5s" if quick else "10s"
    single, cluster = Setup("single"), Setup("cluster")
    single.start()
    cluster.start()
    out = {"subscribers": subs, "rooms": rooms,
           "commands": {"single": [single.pub.command], "cluster": [cluster.redis.command] + [n.command for n in cluster.nodes]}}
    try:
        print(f"== {name}: single node", flush=True)
        out["single_highest"] = highest_clean(single, subs, rooms, start_rate, log, quick, f"{name} single")
        print(f"== {name}: cluster (publish on A, subscribers on B+C)", flush=True)
        out["cluster_highest"] = highest_clean(cluster, subs, rooms, start_rate, log, quick, f"{name} cluster")
        if out["cluster_highest"]:
            rate = out["cluster_highest"]["rate"]
            r = measure(single, subs, rooms, rate, full, log, f"{name} single at cluster rate")
            show(f"{name} single at cluster rate", rate, r)
            out["single_at_cluster_rate"] = summary(r)
        for mode, setup in (("single", single), ("cluster", cluster)):
            r = measure(setup, subs, rooms, 50, full, log, f"{name} {mode} at 50 msg/s")
            show(f"{name} {mode} light", 50, r)
            out[f"{mode}_at_50"] = summary(r)
    finally:
        single.stop()
        cluster.stop()
    return out


def nodes_part(log, quick):
    """Redis cost per following node: K follower nodes, one subscriber per room per node."""
    full = "5s" if quick else "8s"
    rows = []
    for rooms in (1, 100):
        for k in (1, 2, 4, 8):
            setup = Setup("cluster", followers=k)
            setup.start()
            try:
                for rate in (1000, 4000):
                    subs = rooms * k
                    r = measure(setup, subs, rooms, rate, full, log, f"nodes rooms={rooms} K={k}")
                    show(f"nodes rooms={rooms} K={k}", rate, r)
                    s = summary(r)
                    s.update({"rooms": rooms, "follower_nodes": k})
                    rows.append(s)
            finally:
                setup.stop()
    return {"rows": rows, "fits": fit_nodes(rows)}


def fit_nodes(rows):
    """Least-squares fits per (rooms, rate) against K: Redis CPU µs per publish = a + b*K
    (b = what one more following node costs Redis per publish; the main figure), and Redis
    CPU seconds per second of wall = a + b*K (distorted by connect/grace time in the wall)."""
    def line(pts):
        n = len(pts)
        mx = sum(p[0] for p in pts) / n
        my = sum(p[1] for p in pts) / n
        b = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
        return my - b * mx, b
    fits = []
    for rooms in (1, 100):
        for rate in (1000, 4000):
            sel = [r for r in rows if r["rooms"] == rooms and r["rate"] == rate]
            if len(sel) < 2:
                continue
            per_pub = [(r["follower_nodes"], r["redis_cpu_us_per_publish"]) for r in sel]
            a1, b1 = line(per_pub)
            pts = [(r["follower_nodes"], r["redis_cpu_s"] / r["wall_s"]) for r in sel]
            a, b = line(pts)
            fits.append({"rooms": rooms, "rate": rate,
                         "redis_us_per_publish_intercept": round(a1, 1), "redis_us_per_publish_per_node": round(b1, 1),
                         "points_us_per_publish": [(x, y) for x, y in per_pub],
                         "entries_per_xread": [(r["follower_nodes"], r["entries_per_xread"]) for r in sel],
                         "all_clean": all(r["clean"] for r in sel),
                         "redis_core_fraction_intercept": round(a, 4),
                         "redis_core_fraction_per_node": round(b, 4),
                         "points_core_fraction": [(x, round(y, 4)) for x, y in pts]})
    return fits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-results", "cluster-" + time.strftime("%Y%m%d-%H%M%S")))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--parts", default="s1,s2,nodes")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    os.makedirs(args.out, exist_ok=True)
    machine = {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
        "redis": subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "ringcast_commit": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "loadavg_at_start": open("/proc/loadavg").read().strip(),
        "pinning": "redis-server and every ringcast node on CPU 0, ringload (-t 1) on CPU 1",
    }
    log, results = [], {}
    report = {"machine": machine, "results": results}

    def save():
        with open(os.path.join(args.out, "summary.json"), "w") as f:
            json.dump(report, f, indent=1)
        with open(os.path.join(args.out, "raw-runs.json"), "w") as f:
            json.dump(log, f, indent=1)

    try:
        if "s1" in parts:
            results["S1"] = scenario("S1", 1000, 1, 50, log, args.quick)
            save()
        if "s2" in parts:
            results["S2"] = scenario("S2", 10000, 100, 400, log, args.quick)
            save()
        if "nodes" in parts:
            results["nodes"] = nodes_part(log, args.quick)
            save()
    finally:
        machine["loadavg_at_end"] = open("/proc/loadavg").read().strip()
        save()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
