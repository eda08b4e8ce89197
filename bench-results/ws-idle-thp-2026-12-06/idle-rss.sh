#!/bin/bash
# RSS per idle connection, with transparent huge pages off (the default) or left to mimalloc.
# N viewers of 100 rooms held idle 8 s by ringload (source addresses 127.0.0.1-8), the
# server's VmRSS sampled every 0.25 s. The baseline is taken after the fresh server settled
# (4 s: its once-a-second heap collect has run), plateau = median of the last 3 s held,
# peak = max held; per connection = (x - baseline) / N.
# Server on CPU 0 (--shards 1), load generator on CPU 1.
# usage: idle-rss.sh NAME ws|h1 SERVER_BIN RINGLOAD_BIN N OUTDIR [VAR=VALUE ...]
set -e
name=$1; proto=$2; bin=$3; rl=$4; n=$5; out=$6; shift 6
ulimit -n 20000
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
path=$([ "$proto" = ws ] && echo ws || echo events)
env "$@" taskset -c 0 $bin --listen 127.0.0.1:$port --shards 1 --log warn >/dev/null 2>&1 &
pid=$!
sleep 4
rss0=$(awk '/VmRSS/{print $2}' /proc/$pid/status)
thp=$(awk '/THP_enabled/{print $2}' /proc/$pid/status)
samples=$out/$name-samples.txt; : > $samples
taskset -c 1 $rl fanout --proto $proto --sub-url "http://127.0.0.1:$port/rooms/{room}/$path" -s $n -r 100 \
  --idle --hold 8s --src-ips 8 -t 1 -q --json > $out/$name-ringload.json &
lp=$!
while kill -0 $lp 2>/dev/null; do awk '/VmRSS/{print $2}' /proc/$pid/status >> $samples; sleep 0.25; done
wait $lp || true
kill -TERM $pid; wait $pid || true
python3 - "$name" "$rss0" "$n" "$samples" "$thp" <<'P' | tee -a $out/summary.txt
import sys, statistics
name, rss0, n, path, thp = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
s = [int(l) for l in open(path) if l.strip()]
plateau, peak = statistics.median(s[-12:]), max(s)
print(f"{name}: THP_enabled {thp}, rss baseline {rss0} kB, plateau {plateau:.0f} kB, peak {peak} kB: "
      f"plateau {(plateau - rss0) * 1024 / n:.0f} B/conn, peak {(peak - rss0) * 1024 / n:.0f} B/conn (n={n})")
P
