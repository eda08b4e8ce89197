#!/usr/bin/env python3
"""Reads `perf script -F tid,event,trace,ip,sym` of idle-alloc.sh's uprobes and prints the
bytes still allocated at the end, by call site (the first frames of ringcast's own code),
per connection. Usage: idle-alloc.py PERF_SCRIPT.txt N"""
import collections, re, sys

SKIP = re.compile(r"^(ringcast|mi_|_mi_|__rust|__rdl|__rg|alloc::|<alloc::|core::|<core::|std::|<std::|hashbrown::|<hashbrown|_R|\[unknown\]|bytes::|<bytes::|slab::|<slab::)")


def site(frames):
    own = [f for f in frames if not SKIP.match(f)]
    return " < ".join(own[:3]) if own else " < ".join(frames[:4])


def main():
    path, n = sys.argv[1], int(sys.argv[2])
    live, pending = {}, {}
    ev = None
    frames = []

    def flush():
        if ev is None:
            return
        name, args = ev
        s = site(frames)
        if name in ("ma", "za"):
            pending[name] = (args["size"], s)
        elif name in ("mar", "zar"):
            size, s0 = pending.pop(name[:-1], (0, "?"))
            live[args["ret"]] = (size, s0)
        elif name == "ra":
            pending["ra"] = (args["ptr"], args["size"], s)
        elif name == "rar":
            ptr, size, s0 = pending.pop("ra", (0, 0, "?"))
            live.pop(ptr, None)
            live[args["ret"]] = (size, s0)
        elif name == "fr":
            live.pop(args["ptr"], None)
    for line in open(path, errors="replace"):
        m = re.search(r"probe_ringcast:(\w+):\s.*?\)\s*(.*)$", line)
        if m and not line.startswith("\t"):
            flush()
            frames = []
            args = {k: int(v, 0) for k, v in re.findall(r"(\w+)=(0x[0-9a-f]+|\d+)", m.group(2))}
            ev = (m.group(1).replace("__return", ""), args)
        elif line.strip():
            parts = line.strip().split(None, 1)
            if len(parts) == 2:
                frames.append(re.sub(r"\+0x[0-9a-f]+$", "", parts[1]).split(" (")[0])
    flush()
    by = collections.defaultdict(lambda: [0, 0])
    for size, s in live.values():
        by[s][0] += size
        by[s][1] += 1
    total = sum(v[0] for v in by.values())
    print(f"still allocated at the end: {total} B in {len(live)} blocks = {total / n:.1f} B per connection (requested sizes; mimalloc rounds each up to its size class)")
    print("| B per connection | blocks per connection | bytes per block | call site (first own frames) |")
    print("|---:|---:|---:|---|")
    for s, (b, c) in sorted(by.items(), key=lambda kv: -kv[1][0])[:30]:
        if b / n < 2:
            continue
        print(f"| {b / n:.1f} | {c / n:.2f} | {b / c:.0f} | `{s[:220]}` |")


if __name__ == "__main__":
    main()
