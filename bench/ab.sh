#!/usr/bin/env bash
# Two sessmesh builds against each other, alternating, with redis-benchmark:
# for A/B comparisons of one change. Each round starts a fresh one-node
# `sessmesh serve` (development mode) per binary, or with NODES=3 a
# three-node cluster (mutual TLS, rf 3, Quorum levels, as bench/vs_redis.sh
# runs it, the benchmark talking to the first node), fills 100,000 keys with
# 256-byte values, then runs the test and reports requests per second and
# the nodes' CPU time per request (user + system, from /proc, summed over
# the nodes), which moves less from run to run than the rate.
#
#   bench/ab.sh OLD_BINARY NEW_BINARY [TEST] [PIPELINE]
#
# TEST is SET, GET, HSET or HGETALL (default GET); PIPELINE defaults to 16.
# ROUNDS (default 3), REQUESTS (default 2000000), WORKERS (each node's
# worker threads, default 1) and NODES (1 or 3, default 1) are read from the
# environment. Build each binary with `cargo build --release -p
# sessmesh-server` at the two commits and copy target/release/sessmesh
# aside. Linux only (/proc).
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,19p' "$0"; exit 2; }
old=$1 new=$2 test=${3:-GET} pipeline=${4:-16}
ROUNDS=${ROUNDS:-3} REQUESTS=${REQUESTS:-2000000} WORKERS=${WORKERS:-1} NODES=${NODES:-1}
case $NODES in 1|3) ;; *) echo "NODES must be 1 or 3, not $NODES" >&2; exit 2 ;; esac
case $test in SET|GET|HSET|HGETALL) ;; *) echo "TEST must be SET, GET, HSET or HGETALL, not $test" >&2; exit 2 ;; esac
for bin in "$old" "$new"; do [ -x "$bin" ] || { echo "not an executable: $bin" >&2; exit 2; }; done
work=$(mktemp -d)
nodes=()
stop_nodes() { for pid in "${nodes[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; nodes=(); }
cleanup() { stop_nodes; rm -rf "$work"; }
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
cpu_ticks() { local t=0 pid; for pid in "${nodes[@]}"; do t=$((t + $(awk '{ print $14 + $15 }' "/proc/$pid/stat"))); done; echo "$t"; }

# Starts a node of binary $1 named $2 with more arguments; its ready line's
# fields are then read with field.
start_node() { # binary name args...
  local bin=$1 name=$2; shift 2
  "$bin" serve --name "$name" --peer-listen 127.0.0.1:0 --resp-listen 127.0.0.1:0 \
    --http-listen 127.0.0.1:0 --worker-threads "$WORKERS" "$@" > "$work/$name.out" 2> "$work/$name.err" &
  nodes+=($!)
  for _ in $(seq 1 300); do grep -q "sessmesh ready" "$work/$name.out" 2>/dev/null && break; sleep 0.1; done
  grep -q "sessmesh ready" "$work/$name.out" || { cat "$work/$name.err"; exit 1; }
}
field() { sed -E "s/.* $2=([^ ]+).*/\1/" "$work/$1.out"; }

# Starts one node, or three in a cluster, of binary $1; sets port.
start() { # binary
  local bin=$1
  if [ "$NODES" = 1 ]; then
    start_node "$bin" ab --development
  else
    rm -rf "$work/certs"
    "$bin" certs init --dir "$work/certs" > /dev/null
    for n in 1 2 3; do "$bin" certs issue "node-$n" --ip 127.0.0.1 --dir "$work/certs" > /dev/null; done
    tls() { echo --tls-ca "$work/certs/ca.pem" --tls-cert "$work/certs/$1.pem" --tls-key "$work/certs/$1.key"; }
    start_node "$bin" node-1 $(tls node-1) --membership local
    local seed; seed=$(field node-1 peer)
    start_node "$bin" node-2 $(tls node-2) --membership local --seeds "$seed"
    start_node "$bin" node-3 $(tls node-3) --membership local --seeds "$seed"
    local http; http=$(field node-1 http)
    for _ in $(seq 1 200); do
      [ "$(curl -s --noproxy '*' "http://$http/status" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["members"]))')" = 3 ] && break
      sleep 0.1
    done
  fi
  local first=ab addr
  [ "$NODES" = 3 ] && first=node-1
  addr=$(field "$first" resp)
  port=${addr##*:}
}

echo "| round | build | $test -P $pipeline req/s | nodes' CPU per request |"
echo "| ---: | --- | ---: | ---: |"
for round in $(seq 1 "$ROUNDS"); do
  for side in old new; do
    bin=$old; [ "$side" = new ] && bin=$new
    start "$bin"
    bench "$port" 1000000 16 SET > /dev/null
    [ "$test" = HGETALL ] && bench "$port" 1000000 16 HSET > /dev/null
    before=$(cpu_ticks)
    rate=$(bench "$port" "$REQUESTS" "$pipeline" "$test")
    after=$(cpu_ticks)
    awk -v r="$round" -v s="$side" -v rate="$rate" -v t=$((after - before)) -v n="$REQUESTS" \
      -v hz="$(getconf CLK_TCK)" \
      'BEGIN { printf "| %s | %s | %.0f | %.2f µs |\n", r, s, rate, t / hz * 1e6 / n }'
    stop_nodes
  done
done
