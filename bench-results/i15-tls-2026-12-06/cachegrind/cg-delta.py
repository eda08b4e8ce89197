#!/usr/bin/env python3
"""Per-delivery instruction counts (cachegrind, user space only) of S1 over TLS, from the
difference of two runs per build: 60 messages (cg-B-r6) minus 10 messages (cg-B-r1), 1000
subscribers, so 50,000 deliveries, each message written alone to each subscriber (one write
per delivery at 1 and 6 msg/s). The difference cancels start-up, the 1000 handshakes and the
teardown; the TLS handshake's own crypto (P-256, X25519, SHA-2), whose count varies with
the load generator's probe connections, is left out of the totals.

Usage: cg-delta.py (in this folder; needs cg_annotate from valgrind and the cg-*.out.gz)."""
import gzip, os, re, subprocess, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
BUILDS = ("before", "main", "fixed")
DELIVERIES = 50000
HANDSHAKE = re.compile(r"sha512|sha256|nistz256|curve25519|x25519|p256|ecp_|fiat_|bn_|ecdsa|limbs|LIMBS|mont", re.I)
# The write path of a TLS delivery: the shard/worker and pipe code around one send, the ring.
WRITE_PATH = re.compile(r"gateway::(worker::Worker::(run|start_write|submit_write|tls_flush|submit_tls_send|on_write|on_tls_write|write_complete)"
                        r"|shard::Shard::run|shard::io::.*(start_write|after_write|recycle_frames|on_write|write_complete)"
                        r"|shard::pipe::|uring::)|TlsConn::fill|drop_in_place<gateway::uring|Vec<T,A>::push_mut")


def annotate(path):
    with tempfile.NamedTemporaryFile(suffix=".out") as tmp:
        tmp.write(gzip.open(path).read())
        tmp.flush()
        text = subprocess.run(["cg_annotate", "--show=Ir,D1mr,D1mw", "--threshold=0", "--auto=no", tmp.name],
                              capture_output=True, text=True, check=True).stdout
    out = {}
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) \([\s\d.]+%\)\s+([\d,]+)\s*(?:\([\s\d.]+%\))?\s+([\d,]+)\s*(?:\([\s\d.]+%\))?\s+(.*)$", line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        name = m.group(4).split(":", 1)[-1].strip()
        vals = [int(x.replace(",", "")) for x in m.groups()[:3]]
        out[name] = [a + b for a, b in zip(out.get(name, [0, 0, 0]), vals)]
    return out


def main():
    delta = {}
    for b in BUILDS:
        lo, hi = annotate(os.path.join(HERE, f"cg-{b}-r1.out.gz")), annotate(os.path.join(HERE, f"cg-{b}-r6.out.gz"))
        delta[b] = {k: [(h - l) / DELIVERIES for h, l in zip(hi.get(k, [0, 0, 0]), lo.get(k, [0, 0, 0]))] for k in set(lo) | set(hi)}
    print("Per delivery (one write each), user space, cachegrind (D1 32 KiB; D1 misses = reads + writes):\n")
    print("| build | instructions, all but handshake crypto | of which the write path | D1 misses, all but handshake crypto | D1 misses, write path |")
    print("|---|---:|---:|---:|---:|")
    for b in BUILDS:
        keep = {k: v for k, v in delta[b].items() if not HANDSHAKE.search(k)}
        path = {k: v for k, v in keep.items() if WRITE_PATH.search(k)}
        print(f"| {b} | {sum(v[0] for v in keep.values()):.0f} | {sum(v[0] for v in path.values()):.0f} | "
              f"{sum(v[1] + v[2] for v in keep.values()):.1f} | {sum(v[1] + v[2] for v in path.values()):.1f} |")
    print("\nWrite-path functions, instructions per delivery (|value| ≥ 5 in some build):\n")
    print("| function | " + " | ".join(BUILDS) + " |")
    print("|---|" + "---:|" * len(BUILDS))
    names = {k for b in BUILDS for k in delta[b] if WRITE_PATH.search(k) and abs(delta[b][k][0]) >= 5}
    for k in sorted(names, key=lambda k: -max(delta[b].get(k, [0])[0] for b in BUILDS)):
        short = re.sub(r"<impl [^>]*>", "", k.replace("gateway::", ""))
        print(f"| `{short[-80:]}` | " + " | ".join(f"{delta[b].get(k, [0])[0]:.0f}" for b in BUILDS) + " |")


if __name__ == "__main__":
    main()
