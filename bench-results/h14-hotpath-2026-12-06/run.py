#!/usr/bin/env python3
"""Issue 14 hot-path check: ringcast before (4e979b1) and after (main) beside nginx+nchan,
interleaved in one run (before, after, nchan, before, after, nchan, ...).

Per server slot (one server start): a fixed common rate every server serves cleanly, a
fixed high rate for ringcast only, then a short ascending sweep with 3-s steps that stops
at the first unclean step. Server on CPU 0, the same ringload (the after build) on CPU 1,
`--pub-pipeline 8`, 100-byte payloads. Server CPU per delivery = (utime+stime of the
server's processes across the run) / deliveries.

Usage: run.py BEFORE_BIN AFTER_BIN RINGLOAD_BIN [--rounds 3] [--scenarios S1,S2]
The libFuzzer process `http1_conn`, if running, is SIGSTOPped while measuring and
SIGCONTed after (it is never killed).
"""
import argparse, json, os, signal, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import fanout_bench as fb  # noqa: E402

fb.PEERS = os.environ.get("PEERS", "/work/shared/peers")

PIPELINE = ["--pub-pipeline", "8"]
PLAN = {
    # scenario: (subs, rooms, common rate, ringcast fixed high rate, ringcast sweep, nchan sweep)
    "S1": (1000, 1, 80, 1800, [2000, 2100, 2200, 2300, 2400, 2600], [150, 175, 200]),
    "S2": (10000, 100, 400, 2000, [3000, 4000, 6000, 8000], [600, 800, 1000, 1200]),
}


class RingcastBin(fb.Ringcast):
    def __init__(self, name, binary):
        super().__init__([])
        self.name, self.binary = name, binary

    def start(self):
        fb.RINGCAST = self.binary
        super().start()
        self.command = self.command.replace("ringcast", self.binary, 1)


def load_snapshot():
    up = open("/proc/loadavg").read().split()[:3]
    ps = subprocess.run(["ps", "-eo", "pid,stat,pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True).stdout.splitlines()[:8]
    return {"loadavg": up, "top": ps}


def fuzzers():
    out = subprocess.run(["pgrep", "-x", "http1_conn"], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("ringload")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scenarios", default="S1,S2")
    ap.add_argument("--tag", default="")
    ap.add_argument("--no-sweep", action="store_true", help="fixed rates only")
    a = ap.parse_args()
    fb.RINGLOAD = a.ringload
    plain = fb.ringload
    fb.ringload = lambda server, args, log: plain(server, args + PIPELINE, log)
    servers = [RingcastBin("before", a.before), RingcastBin("after", a.after), fb.Nchan()]
    log, rows = [], []
    stopped = fuzzers()
    for p in stopped:
        os.kill(p, signal.SIGSTOP)
    print(f"SIGSTOP http1_conn {stopped}", flush=True)
    try:
        for scen in a.scenarios.split(","):
            subs, rooms, common, high, rc_sweep, nc_sweep = PLAN[scen]
            base = ["-s", str(subs), "-r", str(rooms), "--size", "100"]
            for rnd in range(1, a.rounds + 1):
                for srv in servers:
                    snap = load_snapshot()
                    srv.start()
                    runs = [("common", common, "5s")]
                    if srv.name != "nchan":
                        runs.append(("high", high, "5s"))
                    sweep = [] if a.no_sweep else nc_sweep if srv.name == "nchan" else rc_sweep
                    for kind, rate, dur in runs + [("sweep", r, "3s") for r in sweep]:
                        n0 = len(log)
                        r = fb.ringload(srv, base + ["--rate", str(rate), "-d", dur], log)
                        log[n0]["scenario"], log[n0]["round"], log[n0]["kind"] = scen, rnd, kind
                        s = fb.summary(r)
                        row = {"scenario": scen, "round": rnd, "server": srv.name, "kind": kind, "duration": dur,
                               "loadavg_before_slot": snap["loadavg"], **s,
                               "ringload_cpu_us_per_delivery": round(r.get("cpu_us_per_delivery") or 0, 3),
                               "bytes_per_delivery": round((r.get("bytes_read") or 0) / max(r.get("delivered") or 1, 1), 1)}
                        rows.append(row)
                        print(f"{scen} r{rnd} {srv.name:6} {kind:6} rate {rate:>6}: {'clean' if s['clean'] else 'NOT clean'} "
                              f"{s['deliveries_per_s']} del/s cpu {s['server_cpu_pct']}% {s['server_cpu_us_per_delivery']} us/del "
                              f"sched p99 {s['schedule_p99_ms']} client {row['ringload_cpu_us_per_delivery']} us/del {row['bytes_per_delivery']} B/del load {snap['loadavg'][0]} {'' if s['clean'] else s['reasons'][:2]}", flush=True)
                        if kind == "sweep" and not s["clean"]:
                            break
                    srv.stop()
                    if rnd == 1 and scen == a.scenarios.split(",")[0]:
                        rows[-1]["server_command"] = srv.command
                    log[-1]["top_before_slot"] = snap["top"]
    finally:
        for p in stopped:
            try:
                os.kill(p, signal.SIGCONT)
            except ProcessLookupError:
                pass
        print(f"SIGCONT http1_conn {stopped}", flush=True)
        tag = a.tag
        json.dump(rows, open(os.path.join(HERE, f"rows{tag}.json"), "w"), indent=1)
        open(os.path.join(HERE, f"argv{tag}.txt"), "w").write(" ".join(sys.argv) + "\n")
        json.dump(log, open(os.path.join(HERE, f"raw-runs{tag}.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
