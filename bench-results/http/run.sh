#!/usr/bin/env bash
# ringload http beside wrk against nginx serving a static 200, in one run.
# nginx pinned to CPU 0, the load generator pinned to CPU 1; same connections, threads and
# duration for both; each tool runs ROUNDS times, alternating, and every raw output is kept.
# Usage: bench-results/http/run.sh [OUTFILE]
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="${1:-$HERE/results-$(date -u +%Y%m%d-%H%M%S).txt}"
RINGLOAD="$ROOT/target/release/ringload"
CONNS="${CONNS:-50}" DURATION="${DURATION:-10}" ROUNDS="${ROUNDS:-2}"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RUN=$(mktemp -d /tmp/ringcast-nginx-static.XXXX)
sed -e "s#__RUNDIR__#$RUN#g" -e "s#__PORT__#$PORT#" "$HERE/nginx-static.conf.in" > "$RUN/nginx.conf"
setsid taskset -c 0 nginx -p "$RUN" -c "$RUN/nginx.conf" >"$RUN/stdout.log" 2>&1 </dev/null &
for _ in $(seq 50); do [ -s "$RUN/nginx.pid" ] && break; sleep 0.1; done
sleep 0.3
trap 'kill -QUIT $(cat "$RUN/nginx.pid") 2>/dev/null || true' EXIT
URL="http://127.0.0.1:$PORT/"
{
  echo "# ringload http vs wrk, nginx static 200 ($(date -u +%FT%TZ))"
  echo "# machine: nproc=$(nproc) kernel=$(uname -r) cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "# nginx: 1 worker, pinned to CPU 0 (taskset -c 0); load generator pinned to CPU 1 (taskset -c 1)"
  echo "# wrk: $(wrk -v 2>&1 | head -1)"
  for round in $(seq "$ROUNDS"); do
    echo; echo "## round $round: taskset -c 1 wrk -c $CONNS -t 1 -d ${DURATION}s --latency URL"
    taskset -c 1 wrk -c "$CONNS" -t 1 -d "${DURATION}s" --latency "$URL"
    echo; echo "## round $round: taskset -c 1 ringload http -c $CONNS -t 1 -d ${DURATION}s -q URL"
    taskset -c 1 "$RINGLOAD" http -c "$CONNS" -t 1 -d "${DURATION}s" -q "$URL"
  done
} 2>&1 | tee "$OUT"
echo
python3 - "$OUT" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
wrk = [float(x) for x in re.findall(r"Requests/sec:\s+([\d.]+)", text)]
rl = [float(x) for x in re.findall(r"requests\s+\d+ \(([\d.]+)/s\)", text)]
line = f"wrk req/s {wrk}  ringload req/s {rl}"
if wrk and rl:
    line += f"  ratio ringload/wrk (mean) = {sum(rl)/len(rl)/(sum(wrk)/len(wrk)):.3f}"
print(line)
with open(sys.argv[1], "a") as f:
    f.write("\n# summary: " + line + "\n")
PY
