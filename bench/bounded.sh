#!/usr/bin/env bash
# A node under maxmemory taking far more than it can hold: WRITES sessions
# (64-byte keys, one 256-byte value each; 2,000,000 by default) written with
# redis-py in pipelines of 1,000 into nodes started with --maxmemory MAXMEMORY
# (64mb) and --maxmemory-policy POLICY (allkeys-lru). First one node, then a
# three-node cluster (rf 3) with the same bound on each node, the writes
# spread over the three.
#
#   bench/bounded.sh             # PARTS="single cluster" by default
#
# For each node it reports: the writes refused (must be 0), the keys it
# holds, evicted_keys, used_memory against the bound and the part of it not
# counted for eviction (mem_not_counted_for_evict), and its resident memory
# (VmRSS) and peak (VmHWM) against the bound plus the node's own resident
# memory before the first write (the fixed overhead: code, runtime,
# buffers), and used_memory against the resident growth (the figure the
# accounting must track within 15%). The last 1,000 sessions are then read from every node
# (all must be there), and for the cluster the nodes must hold the same
# number of keys once the evictions have settled (replicas agree).
#
# Linux only (/proc). Needs redis-py.
set -euo pipefail
cd "$(dirname "$0")/.."
WRITES=${WRITES:-2000000}
MAXMEMORY=${MAXMEMORY:-64mb}
POLICY=${POLICY:-allkeys-lru}
PARTS=${PARTS:-single cluster}
cargo build --release --locked -q -p sessmesh-server
bin=target/release/sessmesh
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

status_kb() { awk -v f="^$2:" '$0 ~ f { print $2 }' "/proc/$1/status"; }

start() { # name workers args...: starts a node, sets $addr, $peer and $http
  local name=$1 workers=$2; shift 2
  "$bin" serve --peer-listen 127.0.0.1:0 --resp-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
    --worker-threads "$workers" --maxmemory "$MAXMEMORY" --maxmemory-policy "$POLICY" "$@" \
    > "$work/$name.out" 2> "$work/$name.err" &
  pids+=($!)
  for _ in $(seq 1 300); do grep -q "sessmesh ready" "$work/$name.out" 2>/dev/null && break; sleep 0.1; done
  grep -q "sessmesh ready" "$work/$name.out" || { cat "$work/$name.err"; exit 1; }
  addr=$(sed -E 's/.* resp=([^ ]+).*/\1/' "$work/$name.out")
  peer=$(sed -E 's/.* peer=([^ ]+).*/\1/' "$work/$name.out")
  http=$(sed -E 's/.* http=([^ ]+).*/\1/' "$work/$name.out")
}

cat > "$work/write.py" <<'PY'
import sys
import redis
addrs, writes = sys.argv[1].split(","), int(sys.argv[2])
clients = [redis.Redis(host=a.rsplit(":", 1)[0], port=int(a.rsplit(":", 1)[1])) for a in addrs]
value = b"v" * 256
refused = 0
for first in range(0, writes, 1000):
    pipe = clients[first // 1000 % len(clients)].pipeline(transaction=False)
    for i in range(first, min(first + 1000, writes)):
        pipe.set(b"session:%056d" % i, value)  # 64-byte keys
    refused += sum(isinstance(r, Exception) for r in pipe.execute(raise_on_error=False))
print(refused)
PY

cat > "$work/check.py" <<'PY'
import sys
import time
import redis
addrs, writes = sys.argv[1].split(","), int(sys.argv[2])
clients = [redis.Redis(host=a.rsplit(":", 1)[0], port=int(a.rsplit(":", 1)[1])) for a in addrs]
# Evictions settle: every node under its bound, the same keys on each.
deadline = time.monotonic() + 60
while True:
    infos = [c.info() for c in clients]
    keys = [i.get("db0", {}).get("keys", 0) for i in infos]
    under = all(i["used_memory"] - i.get("mem_not_counted_for_evict", 0) <= i["maxmemory"] for i in infos)
    if (under and len(set(keys)) == 1) or time.monotonic() > deadline:
        break
    time.sleep(0.2)
for n, c in enumerate(clients):
    missing = [i for i in range(writes - 1000, writes) if c.get(b"session:%056d" % i) is None]
    if missing:
        print(f"node {n}: {len(missing)} of the last 1,000 sessions missing, e.g. {missing[:5]}", file=sys.stderr)
        for i in infos:
            print(i.get("db0"), i["evicted_keys"], i["used_memory"], file=sys.stderr)
        sys.exit(1)
for i in infos:
    print(i.get("db0", {}).get("keys", 0), i["evicted_keys"], i["used_memory"],
          i.get("mem_not_counted_for_evict", 0), i["maxmemory"])
print("agree" if len(set(keys)) == 1 else "differ")
PY

echo "| nodes | node | writes refused | keys held | evicted_keys | used_memory / maxmemory | of it not counted for evict | RSS | peak RSS | RSS at start | RSS - RSS at start | used / (RSS - RSS at start) | bound + RSS at start |"
echo "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for part in $PARTS; do
  pids=()
  addrs=()
  case $part in
    single) start node-1 2 --development; addrs+=("$addr") ;;
    cluster)
      "$bin" certs init --dir "$work/certs" > /dev/null
      for n in 1 2 3; do "$bin" certs issue "node-$n" --ip 127.0.0.1 --dir "$work/certs" > /dev/null; done
      tls() { echo --tls-ca "$work/certs/ca.pem" --tls-cert "$work/certs/$1.pem" --tls-key "$work/certs/$1.key"; }
      # shellcheck disable=SC2046
      start node-1 1 $(tls node-1) --membership local; addrs+=("$addr"); seed=$peer
      # shellcheck disable=SC2046
      start node-2 1 $(tls node-2) --membership local --seeds "$seed"; addrs+=("$addr")
      # shellcheck disable=SC2046
      start node-3 1 $(tls node-3) --membership local --seeds "$seed"; addrs+=("$addr")
      for _ in $(seq 1 200); do
        [ "$(curl -s "http://$http/status" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["members"]))')" = 3 ] && break
        sleep 0.1
      done ;;
  esac
  starts=()
  for p in "${pids[@]}"; do starts+=("$(status_kb "$p" VmRSS)"); done
  joined=$(IFS=,; echo "${addrs[*]}")
  began=$(date +%s.%N)
  refused=$(python3 "$work/write.py" "$joined" "$WRITES")
  echo "$part: $WRITES writes in $(awk -v s="$began" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }') s" >&2
  mapfile -t lines < <(python3 "$work/check.py" "$joined" "$WRITES")
  echo "$part: replicas ${lines[-1]}" >&2
  for i in "${!pids[@]}"; do
    read -r keys evicted used other max <<< "${lines[$i]}"
    rss=$(status_kb "${pids[$i]}" VmRSS); hwm=$(status_kb "${pids[$i]}" VmHWM); s=${starts[$i]}
    awk -v n="${#pids[@]}" -v i="$((i + 1))" -v w="$refused" -v k="$keys" -v e="$evicted" \
      -v u="$used" -v o="$other" -v m="$max" -v r="$rss" -v h="$hwm" -v s="$s" \
      'BEGIN { printf "| %d | node-%d | %d | %d | %d | %.1f / %.1f MiB | %.1f MiB | %.1f MiB | %.1f MiB | %.1f MiB | %.1f MiB | %.2f | %.1f MiB |\n",
               n, i, w, k, e, u / 1048576, m / 1048576, o / 1048576, r / 1024, h / 1024, s / 1024, (r - s) / 1024,
               u / 1024 / (r - s), m / 1048576 + s / 1024 }'
  done
  for p in "${pids[@]}"; do kill "$p"; wait "$p" 2>/dev/null || true; done
  pids=()
done
