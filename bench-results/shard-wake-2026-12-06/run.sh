#!/bin/bash
# S2 over SSE at 300 msg/s (10,000 subscribers x 100 rooms, 100-B messages, --pub-pipeline 8,
# 5 s), server `taskset -c 0 ringcast --shards 1`, ringload on CPU 1, the two builds
# interleaved (order alternates per round). One JSON per run plus a line in runs.txt.
# The one ringload binary (RINGLOAD) drives both servers.
# usage: run.sh MAIN_RINGCAST FIX_RINGCAST RINGLOAD LAST_ROUND OUTDIR [FIRST_ROUND]
set -u
main=$1; fix=$2; rl=$3; rounds=$4; out=$5; first=${6:-1}
mkdir -p "$out"
one() {  # name ringcast-binary round
  local name=$1 bin=$2 rnd=$3
  local port; port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  taskset -c 0 "$bin" --listen 127.0.0.1:$port --shards 1 --log warn >/dev/null 2>&1 & local pid=$!
  sleep 0.5
  local load; load=$(cut -d' ' -f1-3 /proc/loadavg)
  local cmd=(taskset -c 1 "$rl" fanout --proto h1 -s 10000 -r 100 --size 100 --rate 300 -d 5s
    --src-ips 4 -t 1 -q --json --pub-pipeline 8
    --sub-url "http://127.0.0.1:$port/rooms/{room}/events" --pub-url "http://127.0.0.1:$port/rooms/{room}/messages")
  echo "${cmd[*]}" > "$out/argv-r$rnd-$name.txt"
  "${cmd[@]}" > "$out/r$rnd-$name.json" 2> "$out/r$rnd-$name.stderr"
  kill $pid; wait $pid 2>/dev/null
  python3 - "$out/r$rnd-$name.json" "$name" "$rnd" "$load" <<'PY' | tee -a "$out/runs.txt"
import json, sys
p, name, rnd, load = sys.argv[1:]
try:
    d = json.load(open(p))
except Exception as e:
    print(f"r{rnd} {name:5} no JSON ({e})"); sys.exit()
s, st = d["latency_from_schedule"], d["latency_from_stamp"]
v = d["verdict"]
print(f"r{rnd} {name:5} load {load}  connected {d['subscribers_connected']}  delivered {d['delivered']}/{d['expected']}"
      f"  sched p50 {s['p50_ms']:.1f} p99 {s['p99_ms']:.1f} ms  stamp p50 {st['p50_ms']:.1f} p99 {st['p99_ms']:.1f} ms"
      f"  {'clean' if v['clean'] else 'NOT clean ' + '; '.join(v['reasons'])[:160]}")
PY
}
for rnd in $(seq "$first" "$rounds"); do
  if [ $((rnd % 2)) = 1 ]; then order="main fix"; else order="fix main"; fi
  for name in $order; do
    if [ $name = main ]; then one main "$main" $rnd; else one fix "$fix" $rnd; fi
  done
done
