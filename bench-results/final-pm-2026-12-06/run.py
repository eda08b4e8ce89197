#!/usr/bin/env python3
"""Issue 16 bar: WebSocket fan-out of ringcast beside uWebSockets.js pub/sub, and SSE of the
same ringcast build beside nginx+nchan, interleaved in one run (DESIGN.md §8, S1-S4).

Method after ../i15-layers-2026-12-06/run.py: server on CPU 0 (`ringcast --shards 1`; the
uWS peer and nchan pin themselves with SERVER_CPU=0), one ringload on CPU 1 (`-t 1`),
100-byte payloads, `--pub-pipeline 8`, one server start per slot, rounds as the outer loop
and the slot order reversed on even rounds. Clean = ringload's verdict (no loss, duplicate,
reorder, wrong room, failed publish; p99 from schedule <= 200 ms).

Slots (`--servers`):
  rc-ws   ringcast, subscribers on GET /rooms/{room}/ws (`--proto ws`), publish by HTTP POST
  uws     ../../../shared/peers/uws.sh start ws: the SAME ringload argv (only the port differs)
  rc-sse  ringcast, SSE subscribers (GET /rooms/{room}/events), the same build as rc-ws
  nchan   ../../../shared/peers/nchan.sh start (SSE)
  base-sse  (with --sse-baseline BIN) an older ringcast build over SSE, the same-run baseline
  base-ws   (with --ws-baseline BIN) an older ringcast build over WebSocket, likewise
  rc-ws-ping  the same build with --ws-ping-interval 1 (idle viewers pinged every second)
  rc-ws-thp / rc-sse-thp  the same build with MIMALLOC_ALLOW_THP=1 (transparent huge pages
            left to mimalloc, as before 104a84f)
S3 here: the baseline RSS after the fresh server settled 4 s, held 8 s; peak and plateau
(median of the last 3 s held) per connection.
Per slot and scenario S1 (1000 x 1 room) / S2 (10,000 x 100 rooms): fixed rates (5 s) then,
for WS slots, an ascending sweep of 3-s steps that stops at the second unclean step in a
row; the slot's ceiling is its highest clean step. rc-ws also runs the first fixed rate with
`--publish-over ws` (a viewer's publish on its own connection; uWS ignores client messages).
S3/S4 (`--scenarios S3`): 10,000 idle subscribers held 6 s (`--idle --src-ips 4`: source
addresses 127.0.0.1-4); RSS of the server's processes before the connects and its peak while
held, per connection; S4 = ringload's connect time for all 10,000.

Server CPU per delivery: utime+stime of the server's processes, whole run and sampled every
50 ms in the publish window. Each slot records the 1-min load average and the top processes
before it: the machine is shared (a fuzz run, builds) and nothing else is stopped or reniced.

Usage: run.py RINGCAST_BIN RINGLOAD_BIN [--rounds 2] [--scenarios S1,S2,S3]
              [--servers rc-ws,uws,rc-sse,nchan] [--sse-baseline BIN] [--no-sweep] [--short] [--tag -runN]
Writes rows<tag>.json, raw-runs<tag>.json (every ringload JSON, with its argv), argv<tag>.txt,
machine<tag>.json; rows are saved after every slot.
"""
import argparse, json, os, platform, signal, subprocess, sys, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import fanout_bench as fb  # noqa: E402

PEERS = fb.PEERS = os.environ.get("PEERS", "/work/shared/peers")
# The uWS peer keeps its pid file in UWS_HOME: a private one (node_modules linked from the
# shared install) so that another engineer's `uws.sh stop` cannot end this run's server.
UWS_HOME = os.environ.get("UWS_HOME", "/tmp/ws-bench-uws")
UWS_INSTALL = "/tmp/ringcast-peers/uws/node_modules"
PIPELINE = ["--pub-pipeline", "8"]
# scenario: (subscribers, rooms, fixed rates msg/s for WS slots, WS sweep, fixed rates for SSE slots)
# The WS rates: uWS was clean at 100-300 msg/s in S1 and not even at 600 msg/s in S2 on the
# loaded machine of the prep run (search-run1-uws-prep.log); the SSE rates are
# ../i15-layers-2026-12-06's fixed rates, so its figures compare.
PLAN = {
    "S1": (1000, 1, [100], [200, 300, 400, 500, 600, 800, 1000, 1300, 1600, 2000, 2500], [80, 1000]),
    "S2": (10000, 100, [300], [500, 700, 1000, 1300, 1600, 2000, 2500, 3000, 4000, 5000], [400, 2000]),
}
IDLE_SUBS, IDLE_HOLD = 10000, "8s"
# A fresh server settles this long before its baseline RSS (ringcast collects its heap once a
# second; Node's start-up garbage is collected too).
IDLE_SETTLE_S = 4.0


class RingcastSrv(fb.Ringcast):
    def __init__(self, name, binary, transport, env=None, extra=None):
        super().__init__(extra or [])
        self.name, self.binary, self.transport, self.env = name, binary, transport, env or {}

    def start(self):
        fb.RINGCAST = self.binary
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            super().start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.command = " ".join(f"{k}={v}" for k, v in self.env.items()) + (" " if self.env else "") + \
            self.command.replace("ringcast", self.binary, 1)

    def sub_url(self):
        path = "ws" if self.transport == "ws" else "events"
        return f"http://127.0.0.1:{self.port}/rooms/{{room}}/{path}"


class Uws:
    name, transport = "uws", "ws"

    def start(self):
        os.makedirs(UWS_HOME, exist_ok=True)
        link = os.path.join(UWS_HOME, "node_modules")
        if not os.path.exists(link):
            os.symlink(UWS_INSTALL, link)
        self.port = fb.free_port()
        self.env = dict(os.environ, UWS_HOME=UWS_HOME, UWS_PORT=str(self.port), SERVER_CPU="0")
        subprocess.run([os.path.join(PEERS, "uws.sh"), "start", "ws"], env=self.env, check=True, stdout=subprocess.DEVNULL)
        fb.wait_port(self.port)
        self.pids = [int(open(os.path.join(UWS_HOME, "server.pid")).read())]
        self.command = "SERVER_CPU=0 ../shared/peers/uws.sh start ws (uWebSockets.js via npm uwebsockets@3.0.6, Node " + \
            subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip() + ")"

    def stop(self):
        subprocess.run([os.path.join(PEERS, "uws.sh"), "stop"], env=self.env, stdout=subprocess.DEVNULL)

    def sub_url(self):
        return f"http://127.0.0.1:{self.port}/rooms/{{room}}/ws"


class NchanSrv(fb.Nchan):
    name, transport = "nchan", "sse"

    def sub_url(self):
        return f"http://127.0.0.1:{self.port}/rooms/{{room}}/events"


def ringload(server, args, log, publish=True):
    cmd = ["taskset", "-c", "1", fb.RINGLOAD, "fanout", "--sub-url", server.sub_url()]
    if server.transport == "ws":
        cmd += ["--proto", "ws"]
    if publish:
        cmd += ["--pub-url", f"http://127.0.0.1:{server.port}/rooms/{{room}}/messages"] + PIPELINE
    cmd += ["-t", "1", "-q", "--json"] + args
    samples, done = [], threading.Event()

    def sample():  # (monotonic time, server CPU seconds, server RSS kB) every 50 ms
        while not done.is_set():
            samples.append((time.monotonic(), fb.cpu_seconds(server.pids), fb.rss_kb(server.pids)))
            time.sleep(0.05)
    sampler = threading.Thread(target=sample, daemon=True)
    cpu0, rss0 = fb.cpu_seconds(server.pids), fb.rss_kb(server.pids)
    t0, m0 = time.time(), time.monotonic()
    sampler.start()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    done.set()
    sampler.join()
    cpu1 = fb.cpu_seconds(server.pids)
    try:
        result = json.loads(out.stdout)
    except json.JSONDecodeError:
        result = {"verdict": {"clean": False, "reasons": [f"ringload exit {out.returncode}: {out.stderr.strip()[:300]}"]}}
    result["server_cpu_s"] = cpu1 - cpu0
    result["wall_s"] = wall
    result["server_rss_before_kb"] = rss0
    result["server_rss_peak_kb"] = max([s[2] for s in samples] + [rss0])
    # The idle plateau: the median RSS of the last 3 s held (after the connect burst's
    # transients were collected).
    tail = sorted(s[2] for s in samples if s[0] >= samples[-1][0] - 3.0) if samples else [rss0]
    result["server_rss_plateau_kb"] = tail[len(tail) // 2]
    ct, dur = result.get("connect_time_s"), result.get("duration_s")
    if ct is not None and dur and result.get("deliveries_per_s"):
        w0, w1 = m0 + ct + 0.2, m0 + ct + dur

        def at(t):  # linear interpolation of the CPU samples
            for (ta, ca, _), (tb, cb, _) in zip(samples, samples[1:]):
                if ta <= t <= tb:
                    return ca + (cb - ca) * (t - ta) / ((tb - ta) or 1)
            return None
        c0, c1 = at(w0), at(w1)
        if c0 is not None and c1 is not None and w1 > w0:
            result["window_server_cpu_s"] = c1 - c0
            result["window_s"] = w1 - w0
            result["window_server_cpu_us_per_delivery"] = 1e6 * (c1 - c0) / (w1 - w0) / result["deliveries_per_s"]
    shown = " ".join(a if " " not in a else repr(a) for a in cmd).replace(str(server.port), "PORT")
    log.append({"server": server.name, "command": shown, "result": result})
    return result


def load_snapshot():
    up = open("/proc/loadavg").read().split()[:3]
    ps = subprocess.run(["ps", "-eo", "pid,ni,stat,pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True).stdout.splitlines()[:8]
    # Another engineer's benchmark on the same CPUs (their run.py or ringload) spoils both runs: recorded.
    others = [l for l in subprocess.run(["pgrep", "-af", r"bench-results/.*run\.py|ringload fanout"], capture_output=True, text=True).stdout.splitlines()
              if str(os.getpid()) not in l.split()[:1] and "ws-uws-2026-12-06" not in l and "/tmp/ws-bench-bin/" not in l]
    return {"loadavg": up, "top": ps, "other_benchmarks": [l[:200] for l in others], "utc": time.strftime("%H:%M:%S", time.gmtime())}


def machine(a):
    root = os.path.dirname(os.path.dirname(HERE))
    git = lambda *x: subprocess.run(["git", "-C", root] + list(x), capture_output=True, text=True).stdout.strip()
    sha = lambda p: subprocess.run(["sha256sum", p], capture_output=True, text=True).stdout.split()[0][:16] if p and os.path.exists(p) else None
    return {"nproc": os.cpu_count(), "kernel": platform.release(),
            "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
            "utc_start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "worktree_head": git("rev-parse", "HEAD"),
            "ringcast": a.ringcast, "ringcast_sha256_16": sha(a.ringcast), "ringload": a.ringload,
            "ringload_sha256_16": sha(a.ringload), "sse_baseline": a.sse_baseline, "sse_baseline_sha256_16": sha(a.sse_baseline),
            "node": subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip(),
            "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ringcast")
    ap.add_argument("ringload")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--scenarios", default="S1,S2,S3")
    ap.add_argument("--servers", default="rc-ws,uws,rc-sse,nchan")
    ap.add_argument("--sse-baseline", help="an older ringcast binary, measured over SSE as slot base-sse")
    ap.add_argument("--ws-baseline", help="an older ringcast binary, measured over WebSocket as slot base-ws")
    ap.add_argument("--tag", default="")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--short", action="store_true", help="smoke test: 2-s fixed runs, 2 sweep steps")
    a = ap.parse_args()
    fb.RINGLOAD = a.ringload
    names = a.servers.split(",") + (["base-sse"] if a.sse_baseline else []) + (["base-ws"] if a.ws_baseline else [])
    log, rows = [], []
    paths = {k: os.path.join(HERE, f"{k}{a.tag}.json") for k in ("rows", "raw-runs")}
    open(os.path.join(HERE, f"argv{a.tag}.txt"), "w").write(" ".join(sys.argv) + "\n")
    json.dump(machine(a), open(os.path.join(HERE, f"machine{a.tag}.json"), "w"), indent=1)

    def make(name):
        return {"rc-ws": lambda: RingcastSrv("rc-ws", a.ringcast, "ws"), "uws": Uws,
                "rc-sse": lambda: RingcastSrv("rc-sse", a.ringcast, "sse"), "nchan": NchanSrv,
                # The same binary with transparent huge pages left to mimalloc (as before
                # 104a84f): the hot-path check of turning them off.
                "rc-ws-thp": lambda: RingcastSrv("rc-ws-thp", a.ringcast, "ws", {"MIMALLOC_ALLOW_THP": "1"}),
                # Keep-alive pings every second (the default is 30 s, past S3's hold): the
                # pongs' receives use the ring's pool of provided buffers.
                "rc-ws-ping": lambda: RingcastSrv("rc-ws-ping", a.ringcast, "ws", extra=["--ws-ping-interval", "1"]),
                "rc-sse-thp": lambda: RingcastSrv("rc-sse-thp", a.ringcast, "sse", {"MIMALLOC_ALLOW_THP": "1"}),
                "base-sse": lambda: RingcastSrv("base-sse", a.sse_baseline, "sse"),
                "base-ws": lambda: RingcastSrv("base-ws", a.ws_baseline, "ws")}[name]()

    def save():
        json.dump(rows, open(paths["rows"], "w"), indent=1)
        json.dump(log, open(paths["raw-runs"], "w"), indent=1)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit("SIGTERM: stopping, rows kept"))
    try:
        for rnd in range(1, a.rounds + 1):
            for scen in a.scenarios.split(","):
                order = list(names) if rnd % 2 else list(reversed(names))
                for name in order:
                    srv = make(name)
                    snap = load_snapshot()
                    srv.start()
                    try:
                        if scen == "S3":
                            idle_slot(srv, rnd, snap, log, rows)
                        else:
                            run_slot(a, srv, scen, rnd, snap, log, rows)
                    finally:
                        srv.stop()
                    for r in rows:
                        r.setdefault("server_command", srv.command)
                    log[-1]["top_before_slot"] = snap["top"]
                    log[-1]["other_benchmarks_before_slot"] = snap["other_benchmarks"]
                    save()
    finally:
        save()


def row_of(scen, srv, rnd, kind, snap, r, extra=None):
    s = fb.summary(r)
    return {"scenario": scen, "server": srv.name, "transport": srv.transport, "round": rnd, "kind": kind,
            "loadavg_before_slot": snap["loadavg"], "utc_slot": snap["utc"], "other_benchmarks_before_slot": len(snap["other_benchmarks"]),
            "loadavg_after_run": open("/proc/loadavg").read().split()[:3], **s,
            "window_server_cpu_us_per_delivery": round(r["window_server_cpu_us_per_delivery"], 3) if "window_server_cpu_us_per_delivery" in r else None,
            "window_server_cpu_pct": round(100 * r["window_server_cpu_s"] / r["window_s"], 1) if "window_s" in r else None,
            "connect_time_s": r.get("connect_time_s"),
            "ringload_cpu_us_per_delivery": round(r.get("cpu_us_per_delivery") or 0, 3),
            "bytes_per_delivery": round((r.get("bytes_read") or 0) / max(r.get("delivered") or 1, 1), 1), **(extra or {})}


def run_slot(a, srv, scen, rnd, snap, log, rows):
    subs, rooms, ws_fixed, ws_sweep, sse_fixed = PLAN[scen]
    base = ["-s", str(subs), "-r", str(rooms), "--size", "100"]
    fixed_d = "2s" if a.short else "5s"
    runs = [("fixed", r, fixed_d, True) for r in (ws_fixed if srv.transport == "ws" else sse_fixed)]
    if srv.name == "rc-ws":  # (not rc-ws-thp: the THP check compares HTTP publishes)
        runs.insert(1, ("fixed-pubws", ws_fixed[0], fixed_d, False))
    sweep = [] if a.no_sweep or srv.transport != "ws" else ws_sweep
    if a.short:
        sweep = sweep[:2]
    fails = 0
    for kind, rate, dur, http_pub in runs + [("sweep", r, "3s", True) for r in sweep]:
        n0 = len(log)
        args = base + ["--rate", str(rate), "-d", dur] + ([] if http_pub else ["--publish-over", "ws"])
        r = ringload(srv, args, log, publish=http_pub)
        log[n0].update(scenario=scen, round=rnd, kind=kind, utc=snap["utc"])
        row = row_of(scen, srv, rnd, kind, snap, r, {"publish_over": "http" if http_pub else "ws", "duration": dur})
        rows.append(row)
        print(f"{snap['utc']} {scen} r{rnd} {srv.name:8} {kind:11} rate {rate:>5}: {'clean' if row['clean'] else 'NOT clean'} "
              f"{row['deliveries_per_s']} del/s cpu {row['server_cpu_pct']}% {row['server_cpu_us_per_delivery']} us/del "
              f"window {row['window_server_cpu_pct']}% {row['window_server_cpu_us_per_delivery']} us/del "
              f"sched p99 {row['schedule_p99_ms']} client {row['ringload_cpu_us_per_delivery']} us/del {row['bytes_per_delivery']} B/del "
              f"load {snap['loadavg'][0]} {'' if row['clean'] else row['reasons'][:2]}", flush=True)
        if kind == "sweep":
            fails = 0 if row["clean"] else fails + 1
            if fails >= 2:
                break


def idle_slot(srv, rnd, snap, log, rows):
    time.sleep(IDLE_SETTLE_S)  # let the fresh server settle before its baseline RSS
    args = ["-s", str(IDLE_SUBS), "-r", "100", "--idle", "--hold", IDLE_HOLD, "--src-ips", "4"]
    n0 = len(log)
    r = ringload(srv, args, log, publish=False)
    log[n0].update(scenario="S3", round=rnd, kind="idle", utc=snap["utc"])
    connected = r.get("subscribers_connected")
    before, peak, plateau = r["server_rss_before_kb"], r["server_rss_peak_kb"], r["server_rss_plateau_kb"]
    per = lambda kb: round(1024 * (kb - before) / max(connected or IDLE_SUBS, 1), 1)
    row = row_of("S3", srv, rnd, "idle", snap, r, {
        "subscribers": IDLE_SUBS, "connected": connected, "rss_before_kb": before, "rss_held_peak_kb": peak,
        "rss_held_plateau_kb": plateau, "rss_per_connection_bytes": per(peak),
        "rss_plateau_per_connection_bytes": per(plateau)})
    rows.append(row)
    print(f"{snap['utc']} S3 r{rnd} {srv.name:8} idle: connected {connected} in {row['connect_time_s']} s, RSS {before} -> {peak} kB, "
          f"peak {row['rss_per_connection_bytes']} B/conn, plateau {row['rss_plateau_per_connection_bytes']} B/conn, load {snap['loadavg'][0]} {r.get('verdict', {}).get('reasons', [])[:2]}", flush=True)


if __name__ == "__main__":
    main()
