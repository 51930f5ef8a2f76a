#!/usr/bin/env bash
# Two sessmesh builds against each other, alternating, with redis-benchmark:
# for A/B comparisons of one change. Each round starts a fresh one-node
# `sessmesh serve` (development mode) per binary, fills 100,000 keys with
# 256-byte values, then runs the test and reports requests per second and
# the node's CPU time per request (user + system, from /proc), which moves
# less from run to run than the rate.
#
#   bench/ab.sh OLD_BINARY NEW_BINARY [TEST] [PIPELINE]
#
# TEST is SET, GET, HSET or HGETALL (default GET); PIPELINE defaults to 16.
# ROUNDS (default 3), REQUESTS (default 2000000) and WORKERS (the node's
# worker threads, default 1) are read from the environment. Build each
# binary with `cargo build --release -p sessmesh-server` at the two commits
# and copy target/release/sessmesh aside. Linux only (/proc).
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,15p' "$0"; exit 2; }
old=$1 new=$2 test=${3:-GET} pipeline=${4:-16}
ROUNDS=${ROUNDS:-3} REQUESTS=${REQUESTS:-2000000} WORKERS=${WORKERS:-1}
case $test in SET|GET|HSET|HGETALL) ;; *) echo "TEST must be SET, GET, HSET or HGETALL, not $test" >&2; exit 2 ;; esac
for bin in "$old" "$new"; do [ -x "$bin" ] || { echo "not an executable: $bin" >&2; exit 2; }; done
work=$(mktemp -d)
node=""
cleanup() { [ -n "$node" ] && kill "$node" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

value=$(printf 'v%.0s' $(seq 1 256))
bench() { # port requests pipeline test
  local args=(-h 127.0.0.1 -p "$1" -c 50 -d 256 -r 100000 -n "$2" -P "$3" -q --csv)
  case $4 in
    SET|GET) redis-benchmark "${args[@]}" -t "${4,,}" ;;
    HSET) redis-benchmark "${args[@]}" HSET "h:__rand_int__" field "$value" ;;
    HGETALL) redis-benchmark "${args[@]}" HGETALL "h:__rand_int__" ;;
  esac | tail -1 | cut -d, -f2 | tr -d '"'
}
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

echo "| round | build | $test -P $pipeline req/s | node CPU per request |"
echo "| ---: | --- | ---: | ---: |"
for round in $(seq 1 "$ROUNDS"); do
  for side in old new; do
    bin=$old; [ "$side" = new ] && bin=$new
    "$bin" serve --development --name ab --peer-listen 127.0.0.1:0 --resp-listen 127.0.0.1:0 \
      --http-listen 127.0.0.1:0 --worker-threads "$WORKERS" > "$work/out" 2> "$work/err" &
    node=$!
    for _ in $(seq 1 300); do grep -q "sessmesh ready" "$work/out" 2>/dev/null && break; sleep 0.1; done
    grep -q "sessmesh ready" "$work/out" || { cat "$work/err"; exit 1; }
    addr=$(sed -E 's/.* resp=([^ ]+).*/\1/' "$work/out")
    port=${addr##*:}
    bench "$port" 1000000 16 SET > /dev/null
    [ "$test" = HGETALL ] && bench "$port" 1000000 16 HSET > /dev/null
    before=$(cpu_ticks "$node")
    rate=$(bench "$port" "$REQUESTS" "$pipeline" "$test")
    after=$(cpu_ticks "$node")
    awk -v r="$round" -v s="$side" -v rate="$rate" -v t=$((after - before)) -v n="$REQUESTS" \
      -v hz="$(getconf CLK_TCK)" \
      'BEGIN { printf "| %s | %s | %.0f | %.2f µs |\n", r, s, rate, t / hz * 1e6 / n }'
    kill "$node"; wait "$node" 2>/dev/null || true; node=""
  done
done
