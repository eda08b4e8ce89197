#!/usr/bin/env python3
"""S1 and S2 (DESIGN.md §6) over HTTP/1.1, HTTP/1.1 over TLS (`tls`), HTTP/2 (h2c) and HTTP/3 in one run, with
server CPU per delivery for each, and nginx+nchan (HTTP/1.1 only) as the peer.

Server pinned to CPU 0 (one shard; its companion thread for h2/h3 is pinned to the same
CPU), ringload pinned to CPU 1 (one thread). Same search for the highest clean rate as
fanout_bench.py.

Usage: bench-results/transports_bench.py [--out DIR] [--quick] [--protos h1,tls,h2,h3] [--scenarios S1,S2] [--no-peer]
"""
import argparse, json, os, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fanout_bench as fb  # noqa: E402


def make_cert(directory):
    key, cert = os.path.join(directory, "key.pem"), os.path.join(directory, "cert.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-addext", "basicConstraints=critical,CA:FALSE"],
        check=True, capture_output=True)
    return cert, key


class RingcastAll(fb.Ringcast):
    """ringcast with HTTP/1.1, h2c and HTTP/3 listeners."""

    def __init__(self, cert, key):
        super().__init__([])
        self.cert, self.key = cert, key

    def start(self):
        self.h2c_port = fb.free_port()
        self.h3_port = fb.free_port()
        self.extra = ["--h2c-listen", f"127.0.0.1:{self.h2c_port}", "--h3-listen", f"127.0.0.1:{self.h3_port}",
                      "--tls-cert", self.cert, "--tls-key", self.key]
        self.tls_port = fb.free_port()
        self.extra += ["--tls-listen", f"127.0.0.1:{self.tls_port}"]
        super().start()
        fb.wait_port(self.h2c_port)
        time.sleep(0.3)


class Proto:
    """Points ringload at one transport of a running server."""

    def __init__(self, server, proto):
        self.server, self.proto = server, proto
        self.name = f"{server.name}-{proto}"
        self.pids = server.pids
        if proto == "h1":
            self.port, self.scheme, self.extra = server.port, "http", []
        elif proto == "tls":
            # HTTP/1.1 over TLS (ALPN http/1.1), terminated on the shard's io_uring ring.
            self.port, self.scheme, self.extra = server.tls_port, "https", ["--insecure"]
        elif proto == "h2":
            self.port, self.scheme, self.extra = server.h2c_port, "http", ["--proto", "h2"]
        else:
            self.port, self.scheme, self.extra = server.h3_port, "https", ["--proto", "h3", "--insecure"]


def ringload(target, args, log):
    cmd = ["taskset", "-c", "1", fb.RINGLOAD, "fanout",
           "--sub-url", f"{target.scheme}://127.0.0.1:{target.port}/rooms/{{room}}/events",
           "--pub-url", f"{target.scheme}://127.0.0.1:{target.port}/rooms/{{room}}/messages",
           "-t", "1", "-q", "--json"] + target.extra + args
    cpu0 = fb.cpu_seconds(target.pids)
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    result = {}
    try:
        result = json.loads(out.stdout)
    except json.JSONDecodeError:
        result = {"verdict": {"clean": False, "reasons": [f"ringload exit {out.returncode}: {out.stderr.strip()[:300]}"]}}
    result["server_cpu_s"] = fb.cpu_seconds(target.pids) - cpu0
    result["wall_s"] = wall
    shown = " ".join(cmd).replace(str(target.port), "PORT")
    log.append({"server": target.name, "command": shown, "result": result})
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(fb.ROOT, "bench-results", "transports-" + time.strftime("%Y%m%d-%H%M%S")))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--protos", default="h1,h2,h3")
    ap.add_argument("--scenarios", default="S1,S2")
    ap.add_argument("--no-peer", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    fb.ringload = ringload  # highest_clean calls fb.ringload(server, args, log)
    tmp = tempfile.mkdtemp(prefix="ringcast-bench-cert.")
    cert, key = make_cert(tmp)
    log, results = [], {}
    scenarios = {"S1": (1000, 1, 50), "S2": (10000, 100, 400)}
    for proto in args.protos.split(","):
        for scen in args.scenarios.split(","):
            subs, rooms, start = scenarios[scen]
            server = RingcastAll(cert, key)
            server.start()
            target = Proto(server, proto)
            print(f"== ringcast {proto} {scen}", flush=True)
            results.setdefault(f"ringcast-{proto}", {})[scen] = fb.highest_clean(target, subs, rooms, start, log, args.quick)
            server.stop()
    if not args.no_peer:
        for scen in args.scenarios.split(","):
            subs, rooms, start = scenarios[scen]
            server = fb.Nchan()
            server.start()
            target = Proto.__new__(Proto)
            target.server, target.proto, target.name, target.pids = server, "h1", "nchan-h1", server.pids
            target.port, target.scheme, target.extra = server.port, "http", []
            print(f"== nchan h1 {scen}", flush=True)
            results.setdefault("nchan-h1", {})[scen] = fb.highest_clean(target, subs, rooms, start, log, args.quick)
            server.stop()
    machine = {"nproc": os.cpu_count(), "kernel": os.uname().release, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "ringcast_commit": subprocess.run(["git", "-C", fb.ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()}
    report = {"machine": machine, "results": results}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, "raw-runs.json"), "w") as f:
        json.dump(log, f, indent=1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
