#!/usr/bin/env bash
# What a node counts against maxmemory (INFO used_memory) against what the
# process holds (resident memory, VmRSS, less the resident memory of the
# same node before any session was written), in the same run: one node
# (--development, one worker thread), sessions written with redis-py in
# pipelines of 1,000: 64-byte keys and one 256-byte value each, with and
# without a TTL.
#
#   bench/memory.sh            # SESSIONS="100000 1000000" by default
#
# Linux only (/proc). The figure the issue asks for is the last column:
# used_memory / (RSS - RSS at start).
set -euo pipefail
cd "$(dirname "$0")/.."
SESSIONS=${SESSIONS:-"100000 1000000"}
cargo build --release --locked -q -p sessmesh-server
bin=target/release/sessmesh
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }

echo "| sessions | TTL | used_memory | RSS - RSS at start | used / RSS | RSS per session |"
echo "| ---: | --- | ---: | ---: | ---: | ---: |"
for n in $SESSIONS; do
  for ttl in no yes; do
    "$bin" serve --development --peer-listen 127.0.0.1:0 --resp-listen 127.0.0.1:0 \
      --http-listen 127.0.0.1:0 --worker-threads 1 > "$work/out" 2> "$work/err" &
    pid=$!
    for _ in $(seq 1 300); do grep -q "sessmesh ready" "$work/out" 2>/dev/null && break; sleep 0.1; done
    grep -q "sessmesh ready" "$work/out" || { cat "$work/err"; exit 1; }
    addr=$(sed -E 's/.* resp=([^ ]+).*/\1/' "$work/out")
    start=$(rss_kb "$pid")
    python3 - "$addr" "$n" "$ttl" <<'PY'
import sys
import redis
host, port = sys.argv[1].rsplit(":", 1)
n, ttl = int(sys.argv[2]), sys.argv[3] == "yes"
r = redis.Redis(host=host, port=int(port))
value = b"v" * 256
pipe = r.pipeline(transaction=False)
for i in range(n):
    key = b"session:%056d" % i  # 64 bytes
    if ttl:
        pipe.set(key, value, ex=3600)
    else:
        pipe.set(key, value)
    if i % 1000 == 999:
        pipe.execute()
pipe.execute()
PY
    # Resident memory first: INFO and DBSIZE list the keys, and the memory
    # that takes stays resident after it is freed.
    rss=$(( ($(rss_kb "$pid") - start) * 1024 ))
    used=$(python3 - "$addr" "$n" <<'PY'
import sys
import redis
host, port = sys.argv[1].rsplit(":", 1)
r = redis.Redis(host=host, port=int(port))
used = r.info("memory")["used_memory"]
assert r.dbsize() == int(sys.argv[2]), r.dbsize()
print(used)
PY
)
    awk -v n="$n" -v t="$ttl" -v u="$used" -v r="$rss" \
      'BEGIN { printf "| %d | %s | %d | %d | %.2f | %.0f B |\n", n, t, u, r, u / r, r / n }'
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  done
done
