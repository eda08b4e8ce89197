#!/usr/bin/env python3
"""Issue 15, the S1-over-TLS-at-80-msg/s figure: several ringcast builds (before issue 15,
main, main with the TLS write-path fix) side by side in one run, over TLS and over plain
HTTP/1.1 (the control), interleaved.

Copied from ../i15-layers-2026-12-06/run.py and cut down: builds are named on the command
line (`NAME=BIN`, any number), there is no nchan slot and no sweep, and no other process is
stopped or reniced (this session's rule: the machine is shared with a fuzz run and other
engineers' builds; the noise is accepted, recorded — the load average and the top
processes before every slot — and compared within a round).

Each slot is one server start, one build and one transport. Per round the slots run proto by
proto (h1 and tls alternate which goes first), and within a proto the builds run in an
order rotated by one each round, so no build always runs first or next to the same one.
Per slot: one ringload run of S1 (1000 subscribers, 1 room) at a fixed rate (80 msg/s by
default), `-d` seconds of publishing.

Server on CPU 0 (`taskset -c 0 ringcast --shards 1 --log warn`), ringload on CPU 1 (`-t 1
--pub-pipeline 8 --size 100`). TLS: ringcast also gets `--tls-listen` with a self-signed P-256
certificate; the subscribers connect over https:// (`--insecure`, ALPN http/1.1), the
publisher stays on plain http:// (ringload pipelines only over plain HTTP/1.1), so the TLS
cost measured is the delivery path's.

Server CPU per delivery: utime+stime of the server process (/proc/PID/stat), sampled every
50 ms, in the publish window (from 0.2 s after the subscribers are connected to the end of
publishing), over deliveries/s; and over the whole ringload run.

Server CPU per write (from run 2 on, `--metrics`): the fan-out's writes in the same window
(`ringcast_writes_total` on /metrics, scraped every 0.5 s and interpolated as the CPU is).
At 80 msg/s a write carries one message or several, depending on when the completions and
the next publish meet, which the loaded load generator shifts from slot to slot; CPU per
write takes that out (the TLS cost in question is per write: encrypt, send, completion).

Usage: run.py NAME=BIN [NAME=BIN ...] --ringload BIN [--rounds 8] [--protos tls,h1]
              [--rate 80] [--duration 8s] [--tag -runN]
"""
import argparse, json, os, signal, subprocess, sys, tempfile, threading, time, urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import fanout_bench as fb  # noqa: E402

PIPELINE = ["--pub-pipeline", "8"]
SUBSCRIBERS, ROOMS = 1000, 1


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


def ringload(server, args, log):
    sub, extra = server.sub_url()
    cmd = ["taskset", "-c", "1", fb.RINGLOAD, "fanout", "--sub-url", sub,
           "--pub-url", f"http://127.0.0.1:{server.port}/rooms/{{room}}/messages",
           "-t", "1", "-q", "--json"] + extra + args + PIPELINE
    samples, scrapes, user, done = [], [], [], threading.Event()

    def sample():  # (monotonic time, server CPU seconds) every 50 ms, for the publish window
        n = 0
        while not done.is_set():
            now, (utime, stime) = time.monotonic(), user_system_seconds(server.pids)
            samples.append((now, utime + stime))
            user.append((now, utime))
            if METRICS and n % 10 == 0:
                got = scrape(server.port)
                if got is not None:
                    scrapes.append((time.monotonic(), got))
            n += 1
            time.sleep(0.05)
    sampler = threading.Thread(target=sample, daemon=True)
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
    # (connect_time_s is measured by ringload from its start; its exec adds a few ms).
    ct, dur = result.get("connect_time_s"), result.get("duration_s")
    if ct is not None and dur and result.get("deliveries_per_s"):
        w0, w1 = m0 + ct + 0.2, m0 + ct + dur

        def at(t, series=samples):  # linear interpolation of the samples
            for (ta, ca), (tb, cb) in zip(series, series[1:]):
                if ta <= t <= tb:
                    return ca + (cb - ca) * (t - ta) / ((tb - ta) or 1)
            return None
        c0, c1 = at(w0), at(w1)
        if c0 is not None and c1 is not None and w1 > w0:
            result["window_server_cpu_s"] = c1 - c0
            result["window_s"] = w1 - w0
            result["window_server_cpu_us_per_delivery"] = 1e6 * (c1 - c0) / (w1 - w0) / result["deliveries_per_s"]
            writes = [(t, m["ringcast_writes_total"]) for t, m in scrapes if "ringcast_writes_total" in m]
            x0, x1 = at(w0, writes), at(w1, writes)
            u0, u1 = at(w0, user), at(w1, user)
            if u0 is not None and u1 is not None:
                result["window_server_user_s"] = u1 - u0
            if x0 is not None and x1 is not None and x1 > x0:
                result["window_writes"] = x1 - x0
                result["window_server_cpu_us_per_write"] = 1e6 * (c1 - c0) / (x1 - x0)
                result["window_writes_per_delivery"] = (x1 - x0) / ((w1 - w0) * result["deliveries_per_s"])
                if u0 is not None and u1 is not None:
                    result["window_server_user_us_per_write"] = 1e6 * (u1 - u0) / (x1 - x0)
    shown = " ".join(a if " " not in a else repr(a) for a in cmd)
    for p in {server.port, getattr(server, "tls_port", None)} - {None}:
        shown = shown.replace(str(p), "PORT" if p == server.port else "TLSPORT")
    log.append({"server": server.name, "command": shown, "result": result})
    return result


def user_system_seconds(pids):
    """utime and stime of `pids` (/proc/PID/stat), in seconds."""
    user = system = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11]) / fb.HZ
            system += int(fields[12]) / fb.HZ
        except FileNotFoundError:
            pass
    return user, system


def scrape(port):
    """The samples of /metrics summed over their labels (per shard), or None."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=0.5) as r:
            text = r.read().decode()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        if line.startswith("ringcast_"):
            name, value = line.split("{", 1)[0].split(" ", 1)[0], line.rsplit("}", 1)[-1].split()
            try:
                out[name] = out.get(name, 0.0) + float(value[-1] if "}" in line else value[1])
            except (ValueError, IndexError):
                pass
    return out


METRICS = False


def load_snapshot():
    up = open("/proc/loadavg").read().split()[:3]
    ps = subprocess.run(["ps", "-eo", "pid,stat,ni,pcpu,psr,comm", "--sort=-pcpu"], capture_output=True, text=True).stdout.splitlines()[:8]
    return {"loadavg": up, "top": ps, "utc": time.strftime("%H:%M:%S", time.gmtime())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("builds", nargs="+", help="NAME=BIN, e.g. before=/tmp/i15bin/before/ringcast")
    ap.add_argument("--ringload", required=True)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--protos", default="tls,h1")
    ap.add_argument("--rate", type=int, default=80)
    ap.add_argument("--duration", default="8s")
    ap.add_argument("--tag", default="")
    ap.add_argument("--metrics", action="store_true", help="scrape /metrics for the writes (CPU per write)")
    a = ap.parse_args()
    global METRICS
    METRICS = a.metrics
    builds = [tuple(b.split("=", 1)) for b in a.builds]
    fb.RINGLOAD = a.ringload
    cert, key = make_cert(tempfile.mkdtemp(prefix="i15tls-bench-cert."))
    protos = a.protos.split(",")
    log, rows = [], []
    paths = {k: os.path.join(HERE, f"{k}{a.tag}.json") for k in ("rows", "raw-runs")}
    open(os.path.join(HERE, f"argv{a.tag}.txt"), "w").write(" ".join(sys.argv) + "\n")

    def save():
        json.dump(rows, open(paths["rows"], "w"), indent=1)
        json.dump(log, open(paths["raw-runs"], "w"), indent=1)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit("SIGTERM: stopping; rows kept"))
    try:
        for rnd in range(1, a.rounds + 1):
            order = protos if rnd % 2 else protos[::-1]
            k = (rnd - 1) % len(builds)
            rotated = builds[k:] + builds[:k]
            for proto in order:
                for name, binary in rotated:
                    srv = RingcastBin(name, binary, proto, cert, key)
                    snap = load_snapshot()
                    srv.start()
                    try:
                        run_slot(a, srv, rnd, snap, log, rows)
                    finally:
                        srv.stop()
                    rows[-1]["server_command"] = srv.command
                    log[-1]["top_before_slot"] = snap["top"]
                    save()
    finally:
        save()


def run_slot(a, srv, rnd, snap, log, rows):
    base = ["-s", str(SUBSCRIBERS), "-r", str(ROOMS), "--size", "100", "--rate", str(a.rate), "-d", a.duration]
    n0 = len(log)
    r = ringload(srv, base, log)
    log[n0].update(scenario="S1", round=rnd, utc=snap["utc"])
    s = fb.summary(r)
    row = {"scenario": "S1", "proto": srv.proto, "build": srv.build, "round": rnd, "server": srv.name,
           "duration": a.duration, "loadavg_before_slot": snap["loadavg"], "utc_slot": snap["utc"],
           "loadavg_after_run": open("/proc/loadavg").read().split()[:3], **s,
           "window_server_cpu_us_per_delivery": round(r["window_server_cpu_us_per_delivery"], 3) if "window_server_cpu_us_per_delivery" in r else None,
           "window_server_cpu_pct": round(100 * r["window_server_cpu_s"] / r["window_s"], 1) if "window_s" in r else None,
           "connect_time_s": r.get("connect_time_s"),
           "ringload_cpu_us_per_delivery": round(r.get("cpu_us_per_delivery") or 0, 3),
           "reads_per_delivery": round((r.get("reads") or 0) / max(r.get("delivered") or 1, 1), 3),
           "window_server_cpu_us_per_write": round(r["window_server_cpu_us_per_write"], 3) if "window_server_cpu_us_per_write" in r else None,
           "window_writes_per_delivery": round(r["window_writes_per_delivery"], 3) if "window_writes_per_delivery" in r else None,
           "window_server_user_us_per_write": round(r["window_server_user_us_per_write"], 3) if "window_server_user_us_per_write" in r else None,
           "window_server_user_pct": round(100 * r["window_server_user_s"] / r["window_s"], 1) if "window_server_user_s" in r else None,
           "bytes_per_delivery": round((r.get("bytes_read") or 0) / max(r.get("delivered") or 1, 1), 1)}
    rows.append(row)
    print(f"{snap['utc']} r{rnd} {srv.name:11} rate {a.rate}: {'clean' if s['clean'] else 'NOT clean'} "
          f"{s['deliveries_per_s']} del/s window {row['window_server_cpu_pct']}% {row['window_server_cpu_us_per_delivery']} us/del "
          f"whole {s['server_cpu_us_per_delivery']} us/del per write {row['window_server_cpu_us_per_write']} us "
          f"writes/del {row['window_writes_per_delivery']} sched p99 {s['schedule_p99_ms']} "
          f"reads/del {row['reads_per_delivery']} load {snap['loadavg'][0]} {'' if s['clean'] else s['reasons'][:2]}", flush=True)


if __name__ == "__main__":
    main()
