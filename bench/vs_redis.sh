#!/usr/bin/env bash
# sessmesh against redis-server, in the same run, with redis-benchmark:
# 50 clients, 256-byte values, 100,000 random keys; SET, GET, HSET and
# HGETALL, unpipelined and with 16 commands per pipeline. First one
# sessmesh node against one redis-server, then a three-node sessmesh
# cluster (rf 3, default Quorum levels) against the same redis-server.
#
#   bench/vs_redis.sh            # REQUESTS=200000 by default
#
# The single node runs SINGLE_WORKERS threads (default: one per core, the
# node's own default); each of the three cluster nodes runs CLUSTER_WORKERS
# (default 1), since three nodes and redis-benchmark share the machine.
# redis-server serves commands on one thread. PARTS=single or PARTS=cluster
# runs one half.
#
# CLIENT_CPUS and SERVER_CPUS, when set, are taskset(1) CPU lists: redis-
# benchmark runs on the first, redis-server and the sessmesh nodes on the
# second, so that on a machine with cores to spare the client does not take
# the servers' CPU (or they its). Unset, nothing is pinned.
#
# Needs redis-server and redis-benchmark (Debian: redis-server, redis-tools).
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-200000}
SINGLE_WORKERS=${SINGLE_WORKERS:-$(nproc)}
CLUSTER_WORKERS=${CLUSTER_WORKERS:-1}
PARTS=${PARTS:-single cluster}  # which comparisons to run
CLIENTS=50
pin() { # cpus command... : runs the command on those CPUs, or anywhere
  local cpus=$1; shift
  if [ -n "$cpus" ]; then taskset -c "$cpus" "$@"; else "$@"; fi
}
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --locked -q -p sessmesh-server
bin=target/release/sessmesh

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Starts a node; prints its ready line's fields into the named variables.
start_node() { # name workers args...
  local name=$1 workers=$2; shift 2
  pin "${SERVER_CPUS:-}" "$bin" serve --peer-listen 127.0.0.1:0 --resp-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
    --worker-threads "$workers" "$@" \
    > "$work/$name.out" 2> "$work/$name.err" &
  pids+=($!)
  for _ in $(seq 1 300); do
    grep -q "sessmesh ready" "$work/$name.out" 2>/dev/null && break
    sleep 0.1
  done
  grep "sessmesh ready" "$work/$name.out" || { cat "$work/$name.err"; exit 1; }
}
field() { sed -E "s/.* $2=([^ ]+).*/\1/" "$work/$1.out"; }
resp_port() { local addr; addr=$(field "$1" resp); echo "${addr##*:}"; }

value=$(printf 'v%.0s' $(seq 1 256))
# One benchmark row: prints requests per second, then redis-benchmark's own
# CPU time over the row's wall time (100 = one core busy throughout). A
# client near 100 is the bottleneck: the row then measures the client as
# much as the server.
rps() { # port test [pipeline]
  local port=$1 test=$2 pipeline=${3:-1} args=(-h 127.0.0.1 -p "$1" -c $CLIENTS -d 256 -r 100000 -n "$REQUESTS" -P "$pipeline" -q --csv)
  local TIMEFORMAT='%R %U %S' real user sys
  {
    time case $test in
      SET|GET) pin "${CLIENT_CPUS:-}" redis-benchmark "${args[@]}" -t "${test,,}" ;;
      HSET) pin "${CLIENT_CPUS:-}" redis-benchmark "${args[@]}" HSET "h:__rand_int__" field "$value" ;;
      HGETALL) pin "${CLIENT_CPUS:-}" redis-benchmark "${args[@]}" HGETALL "h:__rand_int__" ;;
    esac > "$work/row"
  } 2> "$work/time"
  read -r real user sys < "$work/time"
  echo "$(tail -1 "$work/row" | cut -d, -f2 | tr -d '"') $(awk -v r="$real" -v u="$user" -v s="$sys" 'BEGIN { printf "%.0f", (u + s) / r * 100 }')"
}

redis_port=$(free_port)
pin "${SERVER_CPUS:-}" redis-server --port "$redis_port" --save "" --appendonly no --daemonize no > "$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

threads() { if [ "$1" = 1 ]; then echo "1 thread"; else echo "$1 threads"; fi; }

compare() { # label sessmesh-port pipelines...
  local label=$1 port=$2; shift 2
  for pipeline in "$@"; do
    for test in SET GET HSET HGETALL; do
      local r rc s sc
      read -r r rc < <(rps "$redis_port" "$test" "$pipeline")
      read -r s sc < <(rps "$port" "$test" "$pipeline")
      awk -v l="$label" -v t="$test" -v p="$pipeline" -v r="$r" -v s="$s" -v rc="$rc" -v sc="$sc" \
        'BEGIN { printf "| %s | %s | %s | %.0f | %.0f | %.2fx | %s%% / %s%% |\n", l, t, p, r, s, s / r, rc, sc }'
    done
  done
}

echo "| sessmesh | command | pipeline | redis-server req/s | sessmesh req/s | ratio | client CPU (vs redis / vs sessmesh) |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
if [[ " $PARTS " == *" single "* ]]; then
  start_node single "$SINGLE_WORKERS" --development --name bench-1 > /dev/null
  compare "1 node, $(threads "$SINGLE_WORKERS")" "$(resp_port single)" 1 16
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'
fi

if [[ " $PARTS " == *" cluster "* ]]; then
  "$bin" certs init --dir "$work/certs" > /dev/null
  for n in 1 2 3; do "$bin" certs issue "node-$n" --ip 127.0.0.1 --dir "$work/certs" > /dev/null; done
  tls() { echo --tls-ca "$work/certs/ca.pem" --tls-cert "$work/certs/$1.pem" --tls-key "$work/certs/$1.key"; }
  start_node node-1 "$CLUSTER_WORKERS" $(tls node-1) --membership local > /dev/null
  seed=$(field node-1 peer)
  start_node node-2 "$CLUSTER_WORKERS" $(tls node-2) --membership local --seeds "$seed" > /dev/null
  start_node node-3 "$CLUSTER_WORKERS" $(tls node-3) --membership local --seeds "$seed" > /dev/null
  http=$(field node-1 http)
  for _ in $(seq 1 200); do
    [ "$(curl -s "http://$http/status" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["members"]))')" = 3 ] && break
    sleep 0.1
  done
  compare "3 nodes, rf 3, Quorum, $(threads "$CLUSTER_WORKERS") each" "$(resp_port node-1)" 1 16
fi
