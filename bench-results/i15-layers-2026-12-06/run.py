#!/usr/bin/env python3
"""Issue 15 performance bar: ringcast before issue 15 (688f9b9) and after (main), over plain
HTTP/1.1 and over TLS, beside nginx+nchan (plain HTTP/1.1 only), interleaved in one run.

Copied from ../h14-hotpath-2026-12-06/run.py and extended with TLS slots. Each slot is one
server start and one transport: before-h1, after-h1, nchan-h1, before-tls, after-tls (the
order is reversed on even rounds, so no server always runs first). Per slot: a common fixed
rate every server serves cleanly (5 s), a fixed high rate for ringcast (5 s), then an
optional ascending sweep with 3-s steps that stops at the first unclean step.

TLS slots: ringcast started with `--tls-listen` and a self-signed P-256 certificate (made
by openssl at start-up); the subscribers connect over https:// (ALPN http/1.1, TLS
terminated on the shard's ring, `ringload --insecure`). The publisher stays on plain
http:// to the same process, because ringload pipelines (`--pub-pipeline 8`) only over
plain HTTP/1.1: the publish path is then the same in h1 and TLS slots, and the TLS
cost measured is the delivery path's. nchan has no TLS in the peer script, so TLS is
before/after only.

Server on CPU 0 (`ringcast --shards 1`; nchan 1 worker), the same ringload (the after
build) on CPU 1 with `-t 1`, 100-byte payloads. Server CPU per delivery = utime+stime of the
server's processes (/proc/PID/stat) around each ringload run / deliveries (whole run:
connects, TLS handshakes, publishing, grace, teardown), and, sampled every 50 ms, in the
publish window only (steady state; see `ringload()` below).

Usage: run.py BEFORE_BIN AFTER_BIN RINGLOAD_BIN [--rounds 2] [--scenarios S1,S2]
              [--protos h1,tls] [--no-sweep] [--sweep-scenarios S1] [--tag -runN] [--short]
libFuzzer processes (the fuzz targets by name) are SIGSTOPped while measuring and SIGCONTed
after (never killed); the list is re-read before every slot. Rows are written after every
slot, so an interrupted run keeps what it measured.
"""
import argparse, json, os, signal, subprocess, sys, tempfile, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import fanout_bench as fb  # noqa: E402

fb.PEERS = os.environ.get("PEERS", "/work/shared/peers")

PIPELINE = ["--pub-pipeline", "8"]
FUZZ_TARGETS = ["http1_conn", "ws_conn", "http1_request", "sse_framing", "ndjson_batch", "token"]
# (scenario, proto): (subs, rooms, common rate, ringcast fixed high rate, ringcast sweep, nchan sweep)
# run1 used PLAN_1; run2 and later PLAN_2 (`--plan 2`): on the loaded machine of run1 the S1
# sweeps often failed at their first step, so PLAN_2 starts them lower, and its fixed high
# rates sit below the ceilings seen in run1, where every slot should be clean. PLAN_2 sweeps
# stop at the second unclean step in a row (PLAN_1: at the first), so that one late step
# (p99 just over 200 ms) does not end a slot's sweep; the ceiling is the highest clean step.
PLAN_2 = {
    ("S1", "h1"): (1000, 1, 80, 1000, [1500, 1800, 1900, 2000, 2100, 2200, 2300, 2400, 2500, 2600], [100, 125, 150, 175, 200, 250]),
    ("S1", "tls"): (1000, 1, 80, 700, [1100, 1250, 1350, 1400, 1450, 1500, 1550, 1600, 1700, 1800], []),
    ("S2", "h1"): (10000, 100, 400, 2000, [3000, 4000, 5000, 6000, 8000], [600, 800, 1000, 1200]),
    ("S2", "tls"): (10000, 100, 400, 2000, [3000, 4000, 5000, 6000, 8000], []),
}
# run5 and run7 (`--plan 3 --scenarios S1 --no-sweep`, run7 `--protos tls`): S1 at 80 and 300 msg/s only. Above ~1000 msg/s
# the shard takes all of CPU 0 whatever the rate, so CPU per delivery there is 1 / rate, not a
# cost; at 300 msg/s it is not saturated and the figure is a cost.
PLAN_3 = dict(PLAN_2)
PLAN_3[("S1", "h1")] = (1000, 1, 80, 300, [], [])
PLAN_3[("S1", "tls")] = (1000, 1, 80, 300, [], [])
# run6 (`--plan 4 --scenarios S1 --protos tls --no-sweep`): S1 over TLS at 1400 and 1600 msg/s
# only, near the ceilings of runs 1-3, to count clean runs of each build at the same rates.
PLAN_4 = dict(PLAN_2)
PLAN_4[("S1", "tls")] = (1000, 1, 1400, 1600, [], [])
PLAN = PLAN_1 = {
    ("S1", "h1"): (1000, 1, 80, 1500, [1800, 1900, 2000, 2100, 2200, 2300, 2400, 2600], [150, 175, 200, 250]),
    ("S1", "tls"): (1000, 1, 80, 800, [1000, 1100, 1150, 1200, 1250, 1300, 1400, 1500, 1600], []),
    ("S2", "h1"): (10000, 100, 400, 2000, [3000, 4000, 5000, 6000, 8000], [600, 800, 1000, 1200]),
    ("S2", "tls"): (10000, 100, 400, 2000, [3000, 4000, 5000, 6000, 8000], []),
}


def make_cert(directory):
    key, cert = os.path.join(directory, "key.pem"), os.path.join(directory, "cert.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-addext", "basicConstraints=critical,CA:FALSE"],
        check=True, capture_output=True)
    return cert, key


class RingcastBin(fb.Ringcast):
    """One build of ringcast; with `tls` also a TLS listener that the subscribers use."""

    def __init__(self, build, binary, proto, cert=None, key=None):
        super().__init__([])
        self.build, self.binary, self.proto = build, binary, proto
        self.name = f"{build}-{proto}"
        self.cert, self.key = cert, key

    def start(self):
        self.extra = []
        if self.proto == "tls":
            self.tls_port = fb.free_port()
            self.extra = ["--tls-listen", f"127.0.0.1:{self.tls_port}", "--tls-cert", self.cert, "--tls-key", self.key]
        fb.RINGCAST = self.binary
        super().start()
        if self.proto == "tls":
            fb.wait_port(self.tls_port)
        self.command = self.command.replace("ringcast", self.binary, 1)

    def sub_url(self):
        if self.proto == "tls":
            return f"https://127.0.0.1:{self.tls_port}/rooms/{{room}}/events", ["--insecure"]
        return f"http://127.0.0.1:{self.port}/rooms/{{room}}/events", []


class NchanH1(fb.Nchan):
    build, proto, name = "nchan", "h1", "nchan-h1"

    def sub_url(self):
        return f"http://127.0.0.1:{self.port}/rooms/{{room}}/events", []


def ringload(server, args, log):
    sub, extra = server.sub_url()
    cmd = ["taskset", "-c", "1", fb.RINGLOAD, "fanout", "--sub-url", sub,
           "--pub-url", f"http://127.0.0.1:{server.port}/rooms/{{room}}/messages",
           "-t", "1", "-q", "--json"] + extra + args + PIPELINE
    samples, done = [], threading.Event()

    def sample():  # (monotonic time, server CPU seconds) every 50 ms, for the publish window
        while not done.is_set():
            samples.append((time.monotonic(), fb.cpu_seconds(server.pids)))
            time.sleep(0.05)
    sampler = threading.Thread(target=sample)
    cpu0 = fb.cpu_seconds(server.pids)
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
    # Publish window: from 0.2 s after the subscribers are connected to the end of publishing
    # (connect_time_s is measured by ringload from its start; its exec adds a few ms). Server
    # CPU-s/s in that window over deliveries/s = CPU per delivery in steady state, without
    # the connects (10k TLS handshakes in S2) and the teardown.
    ct, dur = result.get("connect_time_s"), result.get("duration_s")
    if ct is not None and dur and result.get("deliveries_per_s"):
        w0, w1 = m0 + ct + 0.2, m0 + ct + dur

        def at(t):  # linear interpolation of the samples
            for (ta, ca), (tb, cb) in zip(samples, samples[1:]):
                if ta <= t <= tb:
                    return ca + (cb - ca) * (t - ta) / ((tb - ta) or 1)
            return None
        c0, c1 = at(w0), at(w1)
        if c0 is not None and c1 is not None and w1 > w0:
            result["window_server_cpu_s"] = c1 - c0
            result["window_s"] = w1 - w0
            result["window_server_cpu_us_per_delivery"] = 1e6 * (c1 - c0) / (w1 - w0) / result["deliveries_per_s"]
    shown = " ".join(a if " " not in a else repr(a) for a in cmd)
    for p in {server.port, getattr(server, "tls_port", None)} - {None}:
        shown = shown.replace(str(p), "PORT" if p == server.port else "TLSPORT")
    log.append({"server": server.name, "command": shown, "result": result})
    return result


def load_snapshot():
    up = open("/proc/loadavg").read().split()[:3]
    ps = subprocess.run(["ps", "-eo", "pid,stat,pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True).stdout.splitlines()[:8]
    return {"loadavg": up, "top": ps, "utc": time.strftime("%H:%M:%S", time.gmtime())}


def fuzzers():
    pids = set()
    for name in FUZZ_TARGETS:
        pids |= {int(p) for p in subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout.split()}
    # A libFuzzer binary started by absolute path (pgrep -x above finds it by name already);
    # anchored, so that a shell or cargo command line that merely mentions fuzz/target is
    # not stopped (runs 1-5 used the plain pattern `fuzz/target`; it also stopped a CI build's build scripts and rustc for seconds).
    pids |= {int(p) for p in subprocess.run(["pgrep", "-f", r"^\S*fuzz/target/\S+/release/\S+ "], capture_output=True, text=True).stdout.split()}
    pids.discard(os.getpid())
    return pids


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("ringload")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--scenarios", default="S1,S2")
    ap.add_argument("--protos", default="h1,tls")
    ap.add_argument("--tag", default="")
    ap.add_argument("--no-sweep", action="store_true", help="fixed rates only")
    ap.add_argument("--sweep-scenarios", default="S1", help="scenarios that get the sweep")
    ap.add_argument("--plan", type=int, default=2, choices=[1, 2, 3, 4], help="rate plan: PLAN_1 (run1), PLAN_2, PLAN_3 or PLAN_4")
    ap.add_argument("--short", action="store_true", help="smoke test: 2-s fixed runs, 2 sweep steps")
    a = ap.parse_args()
    fb.RINGLOAD = a.ringload
    global PLAN
    PLAN = {1: PLAN_1, 2: PLAN_2, 3: PLAN_3, 4: PLAN_4}[a.plan]
    cert, key = make_cert(tempfile.mkdtemp(prefix="i15-bench-cert."))
    protos = a.protos.split(",")
    log, rows, stopped = [], [], set()
    paths = {k: os.path.join(HERE, f"{k}{a.tag}.json") for k in ("rows", "raw-runs")}
    open(os.path.join(HERE, f"argv{a.tag}.txt"), "w").write(" ".join(sys.argv) + "\n")

    def save():
        json.dump(rows, open(paths["rows"], "w"), indent=1)
        json.dump(log, open(paths["raw-runs"], "w"), indent=1)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit("SIGTERM: stopping; fuzzers continued, rows kept"))
    try:
        for rnd in range(1, a.rounds + 1):
            for scen in a.scenarios.split(","):
                slots = []
                for proto in protos:
                    slots += [RingcastBin("before", a.before, proto, cert, key), RingcastBin("after", a.after, proto, cert, key)]
                    if proto == "h1":
                        slots.append(NchanH1())
                if rnd % 2 == 0:
                    slots.reverse()
                for srv in slots:
                    new = fuzzers() - stopped
                    for p in new:
                        try:
                            os.kill(p, signal.SIGSTOP)
                            stopped.add(p)
                        except ProcessLookupError:
                            pass
                    if new:
                        print(f"SIGSTOP fuzzers {sorted(new)}", flush=True)
                    snap = load_snapshot()
                    srv.start()
                    try:
                        run_slot(a, srv, scen, rnd, snap, log, rows)
                    finally:
                        srv.stop()
                    rows[-1]["server_command"] = srv.command
                    log[-1]["top_before_slot"] = snap["top"]
                    save()
    finally:
        for p in sorted(stopped):
            try:
                os.kill(p, signal.SIGCONT)
            except ProcessLookupError:
                pass
        print(f"SIGCONT fuzzers {sorted(stopped)}", flush=True)
        save()


def run_slot(a, srv, scen, rnd, snap, log, rows):
    subs, rooms, common, high, rc_sweep, nc_sweep = PLAN[(scen, srv.proto)]
    base = ["-s", str(subs), "-r", str(rooms), "--size", "100"]
    fixed = "2s" if a.short else "5s"
    runs = [("common", common, fixed)]
    if srv.build != "nchan":
        runs.append(("high", high, fixed))
    sweep = [] if a.no_sweep or scen not in a.sweep_scenarios.split(",") else nc_sweep if srv.build == "nchan" else rc_sweep
    if a.short:
        sweep = sweep[:2]
    fails = 0
    for kind, rate, dur in runs + [("sweep", r, "3s") for r in sweep]:
        n0 = len(log)
        r = ringload(srv, base + ["--rate", str(rate), "-d", dur], log)
        log[n0].update(scenario=scen, round=rnd, kind=kind, utc=snap["utc"])
        s = fb.summary(r)
        row = {"scenario": scen, "proto": srv.proto, "build": srv.build, "round": rnd, "server": srv.name,
               "kind": kind, "duration": dur, "loadavg_before_slot": snap["loadavg"], "utc_slot": snap["utc"],
               "loadavg_after_run": open("/proc/loadavg").read().split()[:3], **s,
               "window_server_cpu_us_per_delivery": round(r["window_server_cpu_us_per_delivery"], 3) if "window_server_cpu_us_per_delivery" in r else None,
               "window_server_cpu_pct": round(100 * r["window_server_cpu_s"] / r["window_s"], 1) if "window_s" in r else None,
               "connect_time_s": r.get("connect_time_s"),
               "ringload_cpu_us_per_delivery": round(r.get("cpu_us_per_delivery") or 0, 3),
               "bytes_per_delivery": round((r.get("bytes_read") or 0) / max(r.get("delivered") or 1, 1), 1)}
        rows.append(row)
        print(f"{snap['utc']} {scen} r{rnd} {srv.name:10} {kind:6} rate {rate:>6}: {'clean' if s['clean'] else 'NOT clean'} "
              f"{s['deliveries_per_s']} del/s cpu {s['server_cpu_pct']}% {s['server_cpu_us_per_delivery']} us/del "
              f"window {row['window_server_cpu_pct']}% {row['window_server_cpu_us_per_delivery']} us/del "
              f"sched p99 {s['schedule_p99_ms']} client {row['ringload_cpu_us_per_delivery']} us/del {row['bytes_per_delivery']} B/del "
              f"load {snap['loadavg'][0]} {'' if s['clean'] else s['reasons'][:2]}", flush=True)
        if kind == "sweep":
            fails = 0 if s["clean"] else fails + 1
            if fails >= (1 if a.plan == 1 else 2):
                break


if __name__ == "__main__":
    main()
