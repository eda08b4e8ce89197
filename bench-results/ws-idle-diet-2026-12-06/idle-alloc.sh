#!/bin/bash
# Where an idle connection's memory goes: uprobes on mimalloc's entry points in ringcast
# (the mimalloc crate calls mi_malloc_aligned / mi_zalloc_aligned / mi_realloc_aligned /
# mi_free for every Rust allocation), recorded with call chains while N idle subscribers
# connect; idle-alloc.py then lists what is still allocated at the end, by call site.
# usage: idle-alloc.sh NAME RINGCAST_BIN RINGLOAD_BIN ws|sse N OUTDIR
set -e
name=$1; bin=$2; rl=$3; kind=$4; n=$5; out=$6
path=ws; [ "$kind" = sse ] && path=events
proto=(); [ "$kind" = ws ] && proto=(--proto ws)
perf probe -q -x $bin -d 'probe_ringcast:*' 2>/dev/null || true
perf probe -q -x $bin -a 'ma=mi_malloc_aligned size=%di:u64' -a 'mar=mi_malloc_aligned%return ret=$retval:u64' \
  -a 'za=mi_zalloc_aligned size=%di:u64' -a 'zar=mi_zalloc_aligned%return ret=$retval:u64' \
  -a 'ra=mi_realloc_aligned ptr=%di:u64 size=%si:u64' -a 'rar=mi_realloc_aligned%return ret=$retval:u64' \
  -a 'fr=mi_free ptr=%di:u64'
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
taskset -c 0 $bin --listen 127.0.0.1:$port --shards 1 --log warn >/dev/null 2>&1 &
pid=$!
sleep 0.5
perf record -q -m 16384 --call-graph dwarf,8192 -e 'probe_ringcast:*' -p $pid -o /tmp/ws-diet-alloc/$name.data &
pp=$!
sleep 1
rss0=$(awk '/VmRSS/{print $2}' /proc/$pid/status)
taskset -c 1 $rl fanout "${proto[@]}" --sub-url "http://127.0.0.1:$port/rooms/{room}/$path" -s $n -r 100 --idle --hold 3s --src-ips 4 -t 1 -q --json > $out/idle-alloc-$name-ringload.json &
lp=$!
sleep 2.5
rss1=$(awk '/VmRSS/{print $2}' /proc/$pid/status)
kill -INT $pp; wait $pp || true
echo "rss before $rss0 kB, held $rss1 kB, $(( (rss1 - rss0) * 1024 / n )) B per connection (n=$n)" | tee $out/idle-alloc-$name-rss.txt
wait $lp || true
kill -TERM $pid; wait $pid || true
perf script -i /tmp/ws-diet-alloc/$name.data -F event,trace,ip,sym > /tmp/ws-diet-alloc/$name.txt 2>/dev/null
perf probe -q -x $bin -d 'probe_ringcast:*' || true
python3 "$(dirname "$0")/idle-alloc.py" /tmp/ws-diet-alloc/$name.txt $n | tee $out/idle-alloc-$name.txt
