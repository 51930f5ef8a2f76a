#!/usr/bin/env bash
# Consensus operations against plain writes on a three-node cluster (mutual
# TLS, rf 3, Quorum levels, one worker thread per node, as
# bench/vs_redis.sh runs it), in the same run, with redis-benchmark: 50
# clients, 256-byte values, keys drawn from 100,000,000 (so that two clients
# rarely contend for one key: redis-benchmark stops at the first error
# reply, and a contended consensus operation may answer TRYAGAIN or
# UNCERTAIN; crates/sessmesh-server/tests/atomic_race.rs races
# them on purpose), unpipelined. Each row gives
# requests per second, latency percentiles (ms) and the three nodes' CPU time
# per request (user + system, from /proc).
#
#   bench/consensus.sh          # REQUESTS=100000 by default
#
# Rows: plain SET; SET ... NX (consensus; a new key writes, a taken one
# answers after the prepare); INCR (consensus). Linux only (/proc).
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-100000}
KEYS=100000000
cargo build --release --locked -q -p sessmesh-server
bin=target/release/sessmesh
work=$(mktemp -d)
nodes=()
cleanup() { for pid in "${nodes[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

start_node() { # name args...
  local name=$1; shift
  "$bin" serve --name "$name" --peer-listen 127.0.0.1:0 --resp-listen 127.0.0.1:0 \
    --http-listen 127.0.0.1:0 --worker-threads 1 "$@" > "$work/$name.out" 2> "$work/$name.err" &
  nodes+=($!)
  for _ in $(seq 1 300); do grep -q "sessmesh ready" "$work/$name.out" 2>/dev/null && break; sleep 0.1; done
  grep -q "sessmesh ready" "$work/$name.out" || { cat "$work/$name.err"; exit 1; }
}
field() { sed -E "s/.* $2=([^ ]+).*/\1/" "$work/$1.out"; }
cpu_ticks() { local t=0 pid; for pid in "${nodes[@]}"; do t=$((t + $(awk '{ print $14 + $15 }' "/proc/$pid/stat"))); done; echo "$t"; }

"$bin" certs init --dir "$work/certs" > /dev/null
for n in 1 2 3; do "$bin" certs issue "node-$n" --ip 127.0.0.1 --dir "$work/certs" > /dev/null; done
tls() { echo --tls-ca "$work/certs/ca.pem" --tls-cert "$work/certs/$1.pem" --tls-key "$work/certs/$1.key"; }
start_node node-1 $(tls node-1) --membership local
seed=$(field node-1 peer)
start_node node-2 $(tls node-2) --membership local --seeds "$seed"
start_node node-3 $(tls node-3) --membership local --seeds "$seed"
http=$(field node-1 http)
for _ in $(seq 1 200); do
  [ "$(curl -s --noproxy '*' "http://$http/status" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["members"]))')" = 3 ] && break
  sleep 0.1
done
addr=$(field node-1 resp)
port=${addr##*:}
value=$(printf 'v%.0s' $(seq 1 256))

row() { # label command...
  local label=$1; shift
  local before after
  before=$(cpu_ticks)
  redis-benchmark -h 127.0.0.1 -p "$port" -c 50 -r "$KEYS" -n "$REQUESTS" --csv "$@" > "$work/row"
  after=$(cpu_ticks)
  # "test","rps","avg","min","p50","p95","p99","max"
  tail -1 "$work/row" | tr -d '"' | awk -F, -v l="$label" -v t=$((after - before)) -v n="$REQUESTS" -v hz="$(getconf CLK_TCK)" \
    '{ printf "| %s | %.0f | %s | %s | %s | %.1f µs |\n", l, $2, $5, $6, $7, t / hz * 1e6 / n }'
}

echo "| operation | req/s | p50 ms | p95 ms | p99 ms | nodes' CPU per request |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
row "SET (plain)" SET "k:__rand_int__" "$value"
row "SET NX (consensus)" SET "nx:__rand_int__" "$value" NX
row "INCR, random counters (consensus)" INCR "c:__rand_int__"

