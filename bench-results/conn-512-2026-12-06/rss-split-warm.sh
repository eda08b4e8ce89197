#!/bin/bash
# RSS split (anon / file / shmem) per idle connection, after a warm-up: server on CPU 0, ringload on CPU 1.
# usage: rss-split-warm.sh NAME BIN RINGLOAD ws|sse N
name=$1; bin=$2; rl=$3; kind=$4; n=$5
path=ws; [ "$kind" = sse ] && path=events
proto=(); [ "$kind" = ws ] && proto=(--proto ws)
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
taskset -c 0 $bin --listen 127.0.0.1:$port --shards 1 --log warn >/dev/null 2>&1 &
pid=$!
sleep 2
# Warm-up: 200 idle subscribers connect, are held 1 s and leave, so the code pages of the
# accept/subscribe paths are in before the baseline.
taskset -c 1 $rl fanout "${proto[@]}" --sub-url "http://127.0.0.1:$port/rooms/{room}/$path" -s 200 -r 100 --idle --hold 1s --src-ips 4 -t 1 -q --json > /dev/null 2>&1
sleep 4
get() { awk '/^(VmRSS|RssAnon|RssFile|RssShmem)/{printf "%s ", $2}' /proc/$pid/status; }
b=$(get)
taskset -c 1 $rl fanout "${proto[@]}" --sub-url "http://127.0.0.1:$port/rooms/{room}/$path" -s $n -r 100 --idle --hold 8s --src-ips 4 -t 1 -q --json > /dev/null &
lp=$!
sleep 7
h=$(get)
wait $lp
kill -TERM $pid; wait $pid 2>/dev/null
python3 - "$name" "$n" "$b" "$h" <<'PY'
import sys
name, n, b, h = sys.argv[1], int(sys.argv[2]), list(map(int, sys.argv[3].split())), list(map(int, sys.argv[4].split()))
labels = ["VmRSS", "RssAnon", "RssFile", "RssShmem"]
print(name, " ".join(f"{l} {x}->{y} kB ({1024*(y-x)/n:.1f} B/conn)" for l, x, y in zip(labels, b, h)))
PY
