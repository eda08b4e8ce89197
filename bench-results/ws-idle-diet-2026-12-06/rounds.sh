#!/bin/bash
# Interleaved rounds of idle-rss.sh for the builds named on the command line
# (each /tmp/diet-bins/NAME/{ringcast,ringload}); ROUNDS rounds (default 3), optional FLOW.
# usage: [FLOW=MSGS_PER_SEC] [ROUNDS=3] [TAG=idle] rounds.sh NAME...
out=$(cd "$(dirname "$0")" && pwd)
rounds=${ROUNDS:-3}; tag=${TAG:-idle}
for r in $(seq 1 $rounds); do
  for name in "$@"; do
    bin=/tmp/diet-bins/$name
    echo "load $(cut -d' ' -f1 /proc/loadavg)" >> $out/rounds-log.txt
    # Round numbers go on after the runs already here (idle-rss.sh appends to its files).
    n=$r; while [ -e "$out/idle-rss-$tag-$name-r$n-samples.txt" ]; do n=$((n + rounds)); done
    "$out/idle-rss.sh" "$tag-$name-r$n" ringcast $bin/ringcast $bin/ringload 10000 $out >> $out/rounds-log.txt 2>&1
    sleep 2
  done
done
