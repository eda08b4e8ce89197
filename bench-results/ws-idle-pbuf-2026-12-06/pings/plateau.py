#!/usr/bin/env python3
"""Per-connection RSS of every idle-rss.sh run here: peak (the S3 bench's measure: max held
minus before) and plateau (median of the last 12 samples, ~3 s, after the connect burst's
transients were collected), in B per connection, then the median over each build's runs."""
import glob, re, statistics, collections
rows = collections.defaultdict(list)
for line in open("idle-rss-summary.txt"):
    m = re.match(r"(\S+): rss before (\d+) kB, held max (\d+) kB, .* \(n=(\d+)\)", line)
    if not m:
        continue
    name, before, peak, n = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))
    rss = [int(l.split()[1]) for l in open(f"idle-rss-{name}-samples.txt")]
    plateau = statistics.median(rss[-13:-1])
    build = re.sub(r"-r\d+$", "", name)
    rows[build].append(((peak - before) * 1024 / n, (plateau - before) * 1024 / n))
    print(f"{name:24} peak {((peak - before) * 1024 / n):6.0f}  plateau {((plateau - before) * 1024 / n):6.0f}")
print()
for build, v in rows.items():
    print(f"{build:24} runs {len(v)}  median peak {statistics.median(p for p, _ in v):6.0f}  median plateau {statistics.median(q for _, q in v):6.0f} B per connection")
