#!/usr/bin/env python3
"""Soak (issue 8): ten minutes of steady fan-out while thousands of subscribers churn.

- ringcast (release, one shard, `--history 64`) pinned to CPU 0;
- the steady fan-out: `ringload fanout -t 1 --json` pinned to CPU 1 (2000 subscribers over
  20 rooms, 200 msg/s, 256-byte payloads; every delivery checked for loss, duplicates,
  order and room), one long run by default (`--runs N` splits it);
- a churn driver in this process (threads, also on CPU 1) connecting and disconnecting
  subscribers continuously, the same kinds as `tests/gateway_churn.rs`: close after the
  head, close mid-stream, reset (SO_LINGER 0), never read with a tiny receive buffer on a
  flood room (so the server cuts them as slow consumers), resume from a long-gone id,
  half a request head; plus a few slow readers (1 KiB every 100 ms) that stay;
- every `--sample-every` seconds: RSS (/proc/PID/status), `ringcast_fds_used`,
  `ringcast_tickers_live`, `ringcast_subscribers`, `ringcast_connections`, slow-consumer
  cuts, deliveries and the churn count.

Writes samples.csv, README.md (table and verdicts), ringload-*.json and ringcast.log to
--out (default bench-results/soak/<date>/). Flat means: after --warm-up, no sample of RSS,
fds or tickers is more than 5 % away from the first post-warm-up sample.

Usage: bench-results/soak/soak.py [--minutes 10] [--out DIR] [--churn-rate 100]
Needs target/release/ringcast and target/release/ringload (cargo build --release -p gateway
-p loadgen).
"""
import argparse, csv, datetime, http.client, json, os, platform, signal, socket, struct
import subprocess, sys, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from fanout_bench import ROOT, free_port, rss_kb, wait_port, cpu_seconds  # noqa: E402

RINGCAST = os.path.join(ROOT, "target", "release", "ringcast")
RINGLOAD = os.path.join(ROOT, "target", "release", "ringload")
FLOOD_ROOM = "soak-flood"
CHURN_ROOMS = 20
FLAT_PERCENT_MAX = 5.0


def scrape(conn):
    """Sums of the figures we follow, from one keep-alive /metrics request."""
    conn.request("GET", "/metrics")
    body = conn.getresponse().read().decode()
    sums = {}
    for line in body.splitlines():
        if line.startswith("#") or not line:
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            sums[name] = sums.get(name, 0) + float(value)
        except ValueError:
            pass
    return sums


FOLLOWED = {
    "fds": "ringcast_fds_used",
    "tickers": "ringcast_tickers_live",
    "subscribers": "ringcast_subscribers",
    "connections": "ringcast_connections",
    "slow_cuts": "ringcast_slow_consumer_cuts_total",
    "deliveries": "ringcast_deliveries_total",
}


def figures(conn):
    sums = scrape(conn)
    return {k: int(sums.get(v, 0)) for k, v in FOLLOWED.items()}


class Churn:
    """Churning subscribers on `threads` threads at `rate` connections/s in total."""

    KINDS = ["after_head", "mid_stream", "reset", "never_read", "resume", "half_request"]

    def __init__(self, port, rate, threads, hold_s=4.0, held_max=12):
        self.port, self.rate, self.threads = port, rate, threads
        self.hold_s, self.held_max = hold_s, held_max
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.visits = 0
        self.by_kind = {k: 0 for k in self.KINDS}
        self.failures = 0
        self.failures_by_kind = {k: 0 for k in self.KINDS}
        self.first_failures = []
        self.workers = []

    def start(self):
        for t in range(self.threads):
            w = threading.Thread(target=self.run, args=(t,), daemon=True)
            w.start()
            self.workers.append(w)

    def finish(self):
        self.stop.set()
        for w in self.workers:
            w.join()

    def connect(self, rcvbuf=None, mss=None):
        s = socket.socket()
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if mss:
            # A small announced MSS keeps the server's initial send buffer at tens of KiB
            # (a 64 KiB loopback MSS gives megabytes), so a never-reader is lapped soon.
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
        s.settimeout(5)
        s.connect(("127.0.0.1", self.port))
        return s

    @staticmethod
    def request(room, extra=""):
        return (f"GET /rooms/{room}/events HTTP/1.1\r\nHost: soak\r\n"
                f"Accept: text/event-stream\r\n{extra}\r\n").encode()

    @staticmethod
    def read_until(s, marker, buf=b""):
        while marker not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before {marker!r}")
            buf += chunk
        return buf

    def subscribe(self, room, extra=""):
        s = self.connect()
        s.sendall(self.request(room, extra))
        buf = self.read_until(s, b"\r\n\r\n")
        status = buf.split(b" ", 2)[1]
        if status != b"200":
            s.close()
            raise ConnectionError(f"subscribe answered {status.decode()}")
        return s, buf[buf.index(b"\r\n\r\n") + 4:]

    def once(self, kind, i, held):
        room = f"steady{i % CHURN_ROOMS}"
        if kind == "after_head":
            s, _ = self.subscribe(room)
            s.close()
        elif kind == "mid_stream":
            s, rest = self.subscribe(room)
            # two events, then close with more unread
            s.settimeout(30)  # the steady publisher may stall on a shared CPU; events still come
            while rest.count(b"\nid: ") + rest.startswith(b"id: ") < 2:
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("stream ended mid-stream")
                rest += chunk
            s.close()
        elif kind == "reset":
            s, _ = self.subscribe(room)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        elif kind == "never_read":
            s = self.connect(rcvbuf=2048, mss=536)
            s.sendall(self.request(FLOOD_ROOM))
            held.append((time.monotonic(), s))
        elif kind == "resume":
            s, _ = self.subscribe(room, "Last-Event-ID: 1\r\n")
            s.close()
        elif kind == "half_request":
            s = self.connect()
            s.sendall(b"GET /rooms/steady0/events HTTP/1.1\r\nHo")
            s.close()

    def run(self, t):
        per_thread = self.rate / self.threads
        held = []
        start = time.monotonic()
        n = 0
        i = t
        while not self.stop.is_set():
            # every thread goes through every kind, starting at its own
            now = time.monotonic()
            while held and (now - held[0][0] > self.hold_s or len(held) >= self.held_max):
                held.pop(0)[1].close()
            kind = self.KINDS[(n + t) % len(self.KINDS)]
            try:
                self.once(kind, i, held)
            except OSError as e:
                with self.lock:
                    self.failures += 1
                    self.failures_by_kind[kind] += 1
                    if len(self.first_failures) < 10:
                        self.first_failures.append(f"{kind}: {e}")
            with self.lock:
                self.visits += 1
                self.by_kind[kind] += 1
            n += 1
            i += self.threads
            due = start + n / per_thread
            delay = due - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)
        for _, s in held:
            s.close()


class SlowReaders:
    """Subscribers that read 1 KiB every 100 ms and stay (unless cut)."""

    def __init__(self, port, count):
        self.port, self.count = port, count
        self.stop = threading.Event()
        self.results = []
        self.workers = []

    def start(self):
        for i in range(self.count):
            w = threading.Thread(target=self.run, args=(i,), daemon=True)
            w.start()
            self.workers.append(w)

    def run(self, i):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        s.connect(("127.0.0.1", self.port))
        s.sendall(Churn.request(f"steady{i % CHURN_ROOMS}"))
        s.settimeout(0.01)
        buf, ids, lagged, ended = b"", [], False, False
        while not self.stop.is_set() and not ended:
            self.stop.wait(0.1)
            try:
                chunk = s.recv(1024)
                if not chunk:
                    ended = True
                buf += chunk
            except socket.timeout:
                pass
            except ConnectionError:
                ended = True
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                for line in block.split(b"\n"):
                    if line.startswith(b"id: "):
                        ids.append(int(line[4:]))
                    elif line == b"event: lagged":
                        lagged = True
        s.close()
        contiguous = all(b == a + 1 for a, b in zip(ids, ids[1:]))
        self.results.append({"room": i % CHURN_ROOMS, "ids": len(ids),
                             "first": ids[0] if ids else None, "last": ids[-1] if ids else None,
                             "contiguous": contiguous, "lagged": lagged, "ended": ended})

    def finish(self):
        self.stop.set()
        for w in self.workers:
            w.join()


def flood(port, stop, rate=64, size=4 * 1024):
    """Big messages to the flood room so that never-readers are lapped quickly."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = b"f" * size
    start, n = time.monotonic(), 0
    while not stop.is_set():
        conn.request("POST", f"/rooms/{FLOOD_ROOM}/messages", body=body)
        conn.getresponse().read()
        n += 1
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            stop.wait(delay)
    conn.close()


def deviation(samples, key, warm_up_s):
    after = [s for s in samples if s["t_s"] >= warm_up_s]
    if not after:
        return None, None
    base = after[0][key]
    worst = max(abs(s[key] - base) / base * 100 if base else 0 for s in after)
    return base, worst


def trend(samples, key, warm_up_s):
    """Least-squares slope after warm-up, as % of the first post-warm-up value per 10 min,
    and the spread (max - min) of the post-warm-up samples as % of it."""
    after = [s for s in samples if s["t_s"] >= warm_up_s]
    base = after[0][key] if after else 0
    if len(after) < 2 or not base:
        return None, None
    ts = [s["t_s"] for s in after]
    ys = [s[key] for s in after]
    mt, my = sum(ts) / len(ts), sum(ys) / len(ys)
    slope = sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / sum((t - mt) ** 2 for t in ts)
    return round(slope * 600 / base * 100, 2), round((max(ys) - min(ys)) / base * 100, 2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--sample-every", type=float, default=10)
    ap.add_argument("--warm-up", type=float, default=60, help="seconds excluded from the flatness verdict")
    ap.add_argument("--subs", type=int, default=2000)
    ap.add_argument("--rooms", type=int, default=20)
    ap.add_argument("--rate", type=int, default=200, help="steady messages/s over all rooms")
    ap.add_argument("--runs", type=int, default=1, help="consecutive ringload runs covering the soak")
    ap.add_argument("--max-p99", default="5s",
                    help="ringload's latency bar (its default 200ms is for capacity runs; here the churn driver shares CPU 1 with ringload, and the verdict that matters is loss, duplicates and order)")
    ap.add_argument("--churn-rate", type=float, default=100, help="churned connections/s")
    ap.add_argument("--churn-threads", type=int, default=4)
    ap.add_argument("--slow-readers", type=int, default=8)
    ap.add_argument("--out")
    args = ap.parse_args()
    date = datetime.date.today().isoformat()
    out = args.out or os.path.join(HERE, date)
    os.makedirs(out, exist_ok=True)
    for binary in (RINGCAST, RINGLOAD):
        if not os.access(binary, os.X_OK):
            raise SystemExit(f"{binary} missing: cargo build --release -p gateway -p loadgen")
    os.sched_setaffinity(0, {1})  # the churn driver and sampler share CPU 1 with ringload

    port = free_port()
    server_cmd = ["taskset", "-c", "0", RINGCAST, "--listen", f"127.0.0.1:{port}",
                  "--shards", "1", "--history", "64", "--log", "warn"]
    log_path = os.path.join(out, "ringcast.log")
    log = open(log_path, "w")
    server = subprocess.Popen(server_cmd, stdout=subprocess.DEVNULL, stderr=log)
    wait_port(port)
    pid = server.pid
    scraper = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    time.sleep(1)
    empty = figures(scraper)
    print(f"ringcast pid {pid} port {port}; empty: {empty}", flush=True)

    total_s = args.minutes * 60
    run_s = total_s / args.runs
    ringload_cmd = lambda d: ["taskset", "-c", "1", RINGLOAD, "fanout",
                              "--sub-url", f"http://127.0.0.1:{port}/rooms/{{room}}/events",
                              "--pub-url", f"http://127.0.0.1:{port}/rooms/{{room}}/messages",
                              "-s", str(args.subs), "-r", str(args.rooms), "--room-prefix", "steady",
                              "--rate", str(args.rate), "--size", "256", "-d", f"{int(d)}s",
                              "--max-p99", args.max_p99, "-t", "1", "-q", "--json"]
    runs = []

    def steady():
        for k in range(args.runs):
            # The last run outlasts the sampling window, so every sample sees it.
            d = run_s + (30 if k == args.runs - 1 else 0)
            t0 = time.time()
            p = subprocess.run(ringload_cmd(d), capture_output=True, text=True)
            try:
                result = json.loads(p.stdout)
            except json.JSONDecodeError:
                result = {"verdict": {"clean": False, "reasons": [f"exit {p.returncode}: {p.stderr[:300]}"]}}
            result["exit_code"] = p.returncode
            result["wall_s"] = time.time() - t0
            with open(os.path.join(out, f"ringload-{k + 1}.json"), "w") as f:
                json.dump(result, f, indent=1)
            runs.append(result)
            print(f"ringload run {k + 1}: {'clean' if result.get('verdict', {}).get('clean') else 'NOT clean'} "
                  f"{result.get('verdict', {}).get('reasons', [])}", flush=True)

    steady_thread = threading.Thread(target=steady, daemon=True)
    steady_thread.start()
    deadline = time.monotonic() + 120
    while figures(scraper)["subscribers"] < args.subs:
        if time.monotonic() > deadline:
            raise SystemExit("ringload's subscribers did not connect in 120 s")
        time.sleep(0.5)

    stop_flood = threading.Event()
    flood_thread = threading.Thread(target=flood, args=(port, stop_flood), daemon=True)
    flood_thread.start()
    slow = SlowReaders(port, args.slow_readers)
    slow.start()
    churn = Churn(port, args.churn_rate, args.churn_threads)
    churn.start()

    samples = []
    start = time.monotonic()
    cpu0 = cpu_seconds([pid])
    n = 0
    while True:
        t = time.monotonic() - start
        f = figures(scraper)
        with churn.lock:
            churned = churn.visits
        row = {"t_s": round(t, 1), "rss_kb": rss_kb([pid]), **f, "churned": churned,
               "server_cpu_s": round(cpu_seconds([pid]) - cpu0, 1)}
        samples.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        n += 1
        if n * args.sample_every > total_s:
            break
        time.sleep(max(0, start + n * args.sample_every - time.monotonic()))

    churn.finish()
    slow.finish()
    stop_flood.set()
    flood_thread.join()
    steady_thread.join()
    # Back at the empty baseline (same single scrape connection as then)?
    deadline = time.monotonic() + 15
    while True:
        final = figures(scraper)
        if all(final[k] == empty[k] for k in ("fds", "tickers", "subscribers", "connections")):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    scraper.close()
    alive = server.poll() is None
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(15)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()
    log_text = open(log_path).read()
    panicked = "panicked" in log_text

    with open(os.path.join(out, "samples.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(samples[0].keys()))
        w.writeheader()
        w.writerows(samples)

    verdicts = {}
    for key in ("rss_kb", "fds", "tickers"):
        base, worst = deviation(samples, key, args.warm_up)
        slope, spread = trend(samples, key, args.warm_up)
        verdicts[key] = {"baseline": base, "max_deviation_pct": round(worst, 2),
                         "flat": worst <= FLAT_PERCENT_MAX,
                         "slope_pct_per_10min": slope, "spread_pct": spread}
    back = {k: final[k] == empty[k] for k in ("fds", "tickers", "subscribers", "connections")}
    clean_runs = [r.get("verdict", {}).get("clean", False) for r in runs]
    summary = {
        "flat": verdicts, "final": final, "empty": empty, "back_at_empty": back,
        "alive_until_stopped": alive, "panicked": panicked, "exit_code": server.returncode,
        "churn": {"visits": churn.visits, "by_kind": churn.by_kind, "failures": churn.failures,
                  "failures_by_kind": churn.failures_by_kind,
                  "first_failures": churn.first_failures},
        "slow_readers": slow.results, "ringload_clean": clean_runs,
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    problems = [f"{k} not flat" for k, v in verdicts.items() if not v["flat"]]
    problems += [f"{k} not back at empty" for k, v in back.items() if not v]
    problems += ["ringcast died"] if not alive else []
    problems += ["ringcast panicked"] if panicked else []
    problems += [f"ringload run {k + 1} not clean" for k, c in enumerate(clean_runs) if not c]
    problems += [f"{n} churned {kind} visits failed" for kind, n in churn.failures_by_kind.items() if n]
    summary["problems"] = problems
    ok = not problems
    write_readme(out, args, server_cmd, ringload_cmd(run_s), samples, summary, runs)
    print(json.dumps({k: summary[k] for k in ("flat", "back_at_empty", "panicked", "ringload_clean", "problems")}, indent=1))
    print("soak:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


def write_readme(out, args, server_cmd, ringload_cmd, samples, summary, runs):
    def shown(cmd):
        return " ".join(c.replace(os.path.join(ROOT, ""), "") for c in cmd)

    lines = [
        f"# Soak: {args.minutes:g} minutes of fan-out under subscriber churn",
        "",
        f"Run {datetime.datetime.now().isoformat(timespec='seconds')} on {platform.node()} "
        f"({os.cpu_count()} CPUs, {platform.release()}), by `bench-results/soak/soak.py`.",
        "",
        f"- server: `{shown(server_cmd)}`",
        f"- steady fan-out ({args.runs} run(s)): `{shown(ringload_cmd)}` (sub/pub URLs elided)",
        f"- churn: {args.churn_threads} threads on CPU 1 at {args.churn_rate:g} connections/s, kinds "
        f"{', '.join(Churn.KINDS)} (never-readers: 2 KiB receive buffer and 536-byte MSS on a room "
        f"flooded with 4 KiB messages at 64/s, held ≤ 4 s); {args.slow_readers} slow readers (1 KiB every 100 ms)",
        f"- samples every {args.sample_every:g} s; warm-up {args.warm_up:g} s excluded from the verdict",
        "",
        "## Verdicts",
        "",
        f"**{'PASS' if not summary['problems'] else 'FAIL: ' + '; '.join(summary['problems'])}**",
        "",
        "| figure | baseline (first sample after warm-up) | max deviation after warm-up | ≤ 5 %? "
        "| trend (least squares, per 10 min) | spread after warm-up (max − min) |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for key, v in summary["flat"].items():
        lines.append(f"| {key} | {v['baseline']} | {v['max_deviation_pct']} % | {'yes' if v['flat'] else 'NO'} "
                     f"| {v['slope_pct_per_10min']:+} % | {v['spread_pct']} % |")
    lines += [""]
    for k, r in enumerate(runs):
        verdict, checks, pub = r.get("verdict", {}), r.get("checks", {}), r.get("published", {})
        lines.append(
            f"- ringload run {k + 1}: **{'clean' if verdict.get('clean') else 'NOT clean'}** "
            f"{verdict.get('reasons', [])}; published ok {pub.get('ok', '?')} of {pub.get('scheduled', '?')}, "
            f"expected {r.get('expected', '?')} deliveries, delivered {r.get('delivered', '?')}; "
            f"lost {checks.get('lost', '?')}, duplicated {checks.get('duplicates', '?')}, "
            f"reordered {checks.get('reordered', '?')}, wrong room {checks.get('wrong_room', '?')}, "
            f"disconnects {checks.get('disconnects', '?')}; latency p99 from stamp "
            f"{r.get('latency_from_stamp', {}).get('p99_ms', '?')} ms, from schedule "
            f"{r.get('latency_from_schedule', {}).get('p99_ms', '?')} ms")
    c = summary["churn"]
    lines += [
        f"- churned connections: {c['visits']} ({', '.join(f'{k} {v}' for k, v in c['by_kind'].items())}); "
        f"failures {c['failures']} (by kind {c['failures_by_kind']}; first: {c['first_failures'][:2]})",
        f"- slow-consumer cuts at the end: {summary['final']['slow_cuts']}",
        f"- slow readers: {len(summary['slow_readers'])}, all contiguous: "
        f"{all(s['contiguous'] for s in summary['slow_readers'])}, cut: "
        f"{sum(1 for s in summary['slow_readers'] if s['ended'])}",
        f"- after churn and ringload stopped: {summary['final']} vs empty {summary['empty']} → back at "
        f"empty: {summary['back_at_empty']}",
        f"- ringcast alive until stopped: {summary['alive_until_stopped']}, panicked: {summary['panicked']}, "
        f"exit code after SIGTERM: {summary['exit_code']}",
        "",
        "## Samples",
        "",
        "| t (s) | RSS (MiB) | fds | tickers | subscribers | connections | churned | slow cuts | server CPU (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in samples:
        lines.append(f"| {s['t_s']:.0f} | {s['rss_kb'] / 1024:.1f} | {s['fds']} | {s['tickers']} | "
                     f"{s['subscribers']} | {s['connections']} | {s['churned']} | {s['slow_cuts']} | "
                     f"{s['server_cpu_s']} |")
    lines += ["", "Raw: `samples.csv`, `summary.json`, `ringload-*.json`, `ringcast.log`.", ""]
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
