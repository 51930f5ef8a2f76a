#!/usr/bin/env bash
# The disk store's candidates on sessmesh's workload, in one run: its own
# checksummed log (crates/sessmesh-disk) against fjall and redb. KEYS
# sessions (1,000,000 by default) of 64-byte keys and 352-byte states, each
# written ROUNDS times (2), durable every second; then each store is opened
# again and loaded into memory. Reports writes/s, CPU per write, load time
# and disk bytes per session. The candidates are built in bench/disk, a
# project of its own, so the workspace never builds the ones not chosen.
#
#   bench/disk_candidates.sh [DIR]     # DIR: where the stores go (a temporary one)
set -euo pipefail
cd "$(dirname "$0")/disk"
dir=${1:-$(mktemp -d)}
cargo build --release -q
./target/release/disk-candidates "$dir"
