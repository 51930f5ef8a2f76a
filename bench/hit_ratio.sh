#!/usr/bin/env bash
# Cache hit ratio under a Zipf-distributed session workload, redis-server
# against one sessmesh node (--development, one worker thread), in the same
# run and with the same maxmemory: one fresh server per eviction policy.
#
# The workload, the same seeded sequence for every run: KEYS sessions (64-
# byte keys, session:%056d; 256-byte values), OPS requests whose key ranks
# follow a Zipf law of exponent ZIPF_S (0.99, YCSB's constant; rank to key
# shuffled with the same SEED, so popular keys are not neighbours). Each
# request GETs its session; on a miss it SETs it (the application recreates
# the session), on a hit it SETs it again with probability WRITE_FRACTION
# (the session changed). redis-py sends the GETs in pipelines of BATCH, then
# one pipeline of the SETs they call for. A key met again within a batch
# counts as a one-at-a-time client would see it: a hit, since it was just
# read or set (a miss if the SET that recreated it was refused). The first
# WARMUP requests are not counted; hit ratio = hits / counted GETs.
#
#   bench/hit_ratio.sh                          # the defaults below
#   SESSMESH_POLICIES= bench/hit_ratio.sh       # redis-server alone, no build
#   REDIS_POLICIES= SESSMESH_POLICIES=noeviction MAXMEMORY=0 bench/hit_ratio.sh
#
# The last one only tests the plumbing: with MAXMEMORY=0 (no bound, for
# either server) nothing is evicted, the only misses are first requests
# for a session, and every server shows the same hit ratio and keys held
# (a long tail of sessions is first requested after the warm-up). "vs redis
# allkeys-lru" divides each hit ratio by redis-server's allkeys-lru one from
# the same run (blank when REDIS_POLICIES has no allkeys-lru). A policy the
# node refuses at start gets a row saying so, its error goes to stderr and
# the script exits 1 after the table. Writes a server refused (noeviction,
# or volatile-* with no TTL set, at maxmemory) are counted on stderr.
# Elapsed time per run goes to stderr; with the defaults, 6 to 10 s a run
# on 2 cores, under a minute for the six. The workload repeats exactly;
# redis-server's eviction samples keys at random, so its hit ratios move
# by about 0.005 from one run to the next.
#
# Needs redis-server, redis-cli and redis-py.
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-100000}
OPS=${OPS:-300000}
WARMUP=${WARMUP:-$((OPS / 3))}
ZIPF_S=${ZIPF_S:-0.99}
WRITE_FRACTION=${WRITE_FRACTION:-0.1}
MAXMEMORY=${MAXMEMORY:-8mb}
SEED=${SEED:-1}
BATCH=${BATCH:-100}
REDIS_POLICIES=${REDIS_POLICIES-allkeys-lru allkeys-lfu allkeys-random}
SESSMESH_POLICIES=${SESSMESH_POLICIES-allkeys-lru allkeys-lfu allkeys-random}

work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

bin=target/release/sessmesh
if [ -n "$SESSMESH_POLICIES" ]; then
  cargo build --release --locked -q -p sessmesh-server
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The client: runs the workload against HOST:PORT, then prints
# "hit_ratio dbsize used_memory evicted_keys refused_writes".
cat > "$work/drive.py" <<'PY'
import bisect
import itertools
import random
import sys
import time

import redis

addr, keys, ops, warmup, s, write_fraction, seed, batch = sys.argv[1:]
keys, ops, warmup, seed, batch = int(keys), int(ops), int(warmup), int(seed), int(batch)
s, write_fraction = float(s), float(write_fraction)
host, port = addr.rsplit(":", 1)

rng = random.Random(seed)
order = list(range(keys))
rng.shuffle(order)
names = [b"session:%056d" % i for i in order]  # rank - 1 -> key, 64 bytes
cdf = list(itertools.accumulate(rank ** -s for rank in range(1, keys + 1)))
total = cdf[-1]
value = b"v" * 256


def request():
    """The next request: its key, and whether a hit also updates it."""
    rank = min(bisect.bisect_left(cdf, rng.random() * total), keys - 1)
    return names[rank], rng.random() < write_fraction


r = redis.Redis(host=host, port=int(port))
pipe = r.pipeline(transaction=False)
hits = counted = refused = 0
started = time.monotonic()
for first in range(0, ops, batch):
    requests = [request() for _ in range(min(batch, ops - first))]
    for key, _ in requests:
        pipe.get(key)
    found = pipe.execute()
    # Outcome of each request, as a client sending them one at a time
    # would see it: a key met again in this batch was just read (hit) or
    # just recreated (hit, if that SET is taken: resolved below).
    hit = []
    recreated = {}  # key -> index in sets of the SET recreating it
    seen = set()
    sets = []
    for (key, update), got in zip(requests, found):
        h = got is not None or key in seen
        if got is None and key not in seen:
            recreated[key] = len(sets)
        seen.add(key)
        hit.append(h)
        if not h or update:
            sets.append(key)
            pipe.set(key, value)
    results = pipe.execute(raise_on_error=False) if sets else []
    failed = [isinstance(x, Exception) for x in results]
    for i, ((key, _), got) in enumerate(zip(requests, found)):
        if got is None and key in recreated and recreated[key] < len(failed) \
                and failed[recreated[key]] and hit[i]:
            hit[i] = False  # a repeat of a key whose recreating SET failed
    done = first
    for h in hit:
        if done >= warmup:
            counted += 1
            hits += h
        done += 1
    refused += sum(failed)

elapsed = time.monotonic() - started
info = r.info()
print(
    f"{hits / counted if counted else 0:.4f} {r.dbsize()} {info['used_memory']} "
    f"{info.get('evicted_keys', 0)} {refused}"
)
print(f"  {ops} requests in {elapsed:.1f} s ({ops / elapsed:.0f}/s)", file=sys.stderr)
PY

drive() { # host:port
  python3 "$work/drive.py" "$1" "$KEYS" "$OPS" "$WARMUP" "$ZIPF_S" "$WRITE_FRACTION" "$SEED" "$BATCH"
}

# Results, one line per run: server policy hit_ratio dbsize used evicted
# (hit_ratio "refused" when the server did not start).
: > "$work/results"
failed=0
run() { # server policy
  local server=$1 policy=$2 addr port start line ratio keys used evicted refused
  start=$(date +%s.%N)
  if [ "$server" = redis-server ]; then
    port=$(free_port)
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
      --maxmemory "$MAXMEMORY" --maxmemory-policy "$policy" > "$work/redis.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do
      redis-cli -p "$port" ping > /dev/null 2>&1 && break
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if ! redis-cli -p "$port" ping > /dev/null 2>&1; then
      echo "redis-server $policy did not start:" >&2; cat "$work/redis.log" >&2
      echo "$server $policy refused" >> "$work/results"; failed=1; pid=; return
    fi
    addr=127.0.0.1:$port
  else
    "$bin" serve --development --peer-listen 127.0.0.1:0 --resp-listen 127.0.0.1:0 \
      --http-listen 127.0.0.1:0 --worker-threads 1 \
      --maxmemory "$MAXMEMORY" --maxmemory-policy "$policy" > "$work/out" 2> "$work/err" &
    pid=$!
    for _ in $(seq 1 300); do
      grep -q "sessmesh ready" "$work/out" 2>/dev/null && break
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if ! grep -q "sessmesh ready" "$work/out"; then
      echo "sessmesh $policy did not start:" >&2; tail -5 "$work/err" >&2
      wait "$pid" 2>/dev/null || true; pid=
      echo "$server $policy refused" >> "$work/results"; failed=1; return
    fi
    addr=$(sed -E 's/.* resp=([^ ]+).*/\1/' "$work/out")
  fi
  echo "$server $policy:" >&2
  line=$(drive "$addr")
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  read -r ratio keys used evicted refused <<< "$line"
  echo "$server $policy $ratio $keys $used $evicted" >> "$work/results"
  awk -v s="$start" -v e="$(date +%s.%N)" -v h="$ratio" -v w="$refused" \
    'BEGIN { printf "  hit ratio %s, %d writes refused; %.1f s with the server start\n", h, w, e - s }' >&2
}

for policy in $REDIS_POLICIES; do run redis-server "$policy"; done
for policy in $SESSMESH_POLICIES; do run sessmesh "$policy"; done

echo "keys: $KEYS (64 B), values: 256 B, requests: $OPS ($WARMUP of warm-up not counted)," \
  "Zipf exponent: $ZIPF_S, write fraction: $WRITE_FRACTION, maxmemory: $MAXMEMORY," \
  "seed: $SEED, GETs per pipeline: $BATCH"
echo
# The best any policy could do holding as many keys as each run ended with:
# keep each of the that-many most popular sessions once first requested.
cat > "$work/oracle.py" <<'PY'
import bisect, itertools, random, sys
keys, ops, warmup, s, seed = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
rng = random.Random(seed)
rng.shuffle(list(range(keys)))  # the driver's draws, in the same order
cdf = list(itertools.accumulate(rank ** -s for rank in range(1, keys + 1)))
ranks = []
for _ in range(ops):
    ranks.append(min(bisect.bisect_left(cdf, rng.random() * cdf[-1]), keys - 1))
    rng.random()
for line in sys.stdin:
    held = int(line)
    seen, hits = set(), 0
    for i, rank in enumerate(ranks):
        hits += i >= warmup and rank in seen
        if rank < held:
            seen.add(rank)
    print(f"{hits / (ops - warmup):.4f}")
PY
awk '$3 != "refused" { print $4 } $3 == "refused" { print 0 }' "$work/results" \
  | python3 "$work/oracle.py" "$KEYS" "$OPS" "$WARMUP" "$ZIPF_S" "$SEED" > "$work/oracle"
paste -d' ' "$work/results" "$work/oracle" > "$work/rows"

echo "| server | policy | hit ratio | vs redis allkeys-lru | keys held | best possible with those keys | used_memory | evicted_keys |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
awk '
  $1 == "redis-server" && $2 == "allkeys-lru" && $3 != "refused" { base = $3 }
  { row[NR] = $0 }
  END {
    for (i = 1; i <= NR; i++) {
      split(row[i], f, " ")
      if (f[3] == "refused") { printf "| %s | %s | not started | | | | | |\n", f[1], f[2]; continue }
      vs = base > 0 ? sprintf("%.3f", f[3] / base) : ""
      printf "| %s | %s | %s | %s | %d | %s | %d | %d |\n", f[1], f[2], f[3], vs, f[4], f[7], f[5], f[6]
    }
  }' "$work/rows"
[ "$failed" = 0 ] || exit 1
