#!/usr/bin/env bash
# One node against three nodes sharing Redis and three sharing NATS
# JetStream, in one run on this machine: publications go to node 1, the
# subscribers are spread over nodes 2 and 3 (one node: all on it), over SSE
# and over WebSocket. Writes docs/performance/cluster.md (linked from
# docs/scaling.md) and the JSON reports beside it.
#
#   scripts/bench-cluster.sh           # full run (a couple of minutes)
#   QUICK=1 scripts/bench-cluster.sh   # short steps, to check the setup
#
# Needs Redis on 127.0.0.1:6379 and NATS with JetStream on 127.0.0.1:4222.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${QUICK:-}" ]; then
  DURATION=2s; OUT_DIR=$(mktemp -d)
else
  DURATION=10s; OUT_DIR=docs/performance
fi
mkdir -p "$OUT_DIR"
DOC=$OUT_DIR/cluster.md
cargo build --release --quiet --workspace
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

RUN=$(mktemp -d)
API_KEY=bench-api-key
BASE_PORT=18910
PIDS=()
stop_nodes() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
}
trap 'stop_nodes; rm -rf "$RUN"' EXIT

start_nodes() { # engine count
  local engine=$1 count=$2 prefix="bench$RANDOM"
  for i in $(seq 1 "$count"); do
    target/release/tidings serve --listen "127.0.0.1:$((BASE_PORT + i))" --data-dir "$RUN/n$i" \
      --log-level warn --set demo=false --set history.engine="$engine" \
      --set cluster.prefix="$prefix" --set centrifugo.api_key=$API_KEY \
      --set centrifugo.channel.allow_subscribe=true \
      --set mercure.hub_url="http://127.0.0.1:$((BASE_PORT + 1))/.well-known/mercure" >/dev/null &
    PIDS+=($!)
  done
  for i in $(seq 1 "$count"); do
    for _ in $(seq 1 100); do
      curl -sf "http://127.0.0.1:$((BASE_PORT + i))/healthz" >/dev/null && break
      sleep 0.1
    done
  done
}

bench() { # setup engine nodes wire
  local setup=$1 engine=$2 nodes=$3 wire=$4 extra=() pids=()
  start_nodes "$engine" "$nodes"
  for p in "${PIDS[@]}"; do pids+=(--pid "$p"); done
  for i in $(seq 2 "$nodes"); do extra+=(--sub-node "127.0.0.1:$((BASE_PORT + i))"); done
  echo "== $setup over $wire" >&2
  target/release/tidings bench --quiet --target "tidings-$wire" --url "http://127.0.0.1:$((BASE_PORT + 1))" \
    "${pids[@]}" "${extra[@]}" --set centrifugo.api_key=$API_KEY --scenario "$setup" \
    --channels 10 --subscribers 100 --rate 1000 --payload 100 --duration "$DURATION" \
    --json "$OUT_DIR/cluster-$setup-$wire.json" >&2
  stop_nodes
}

for wire in sse ws; do
  bench one-node memory 1 "$wire"
  bench redis-3 redis 3 "$wire"
  bench nats-3 nats 3 "$wire"
done

python3 - "$OUT_DIR" "$DURATION" > "$DOC" <<'EOF'
import json, sys, subprocess
out, duration = sys.argv[1], sys.argv[2]
print("# One node vs three nodes on Redis and on NATS\n")
print("Written by `scripts/bench-cluster.sh`; all nodes, the engines and the load generator")
print(f"share this machine ({subprocess.getoutput('nproc')} cores). 10 channels x 100 subscribers, 1000")
print(f"publications/s of 100 bytes for {duration}, published on node 1; with three nodes the")
print("subscribers are on nodes 2 and 3, so every delivery crossed the engine. CPU is the")
print("sum over all tidings nodes (the engine's own CPU is not included).\n")
print("| setup | wire | delivered/s | lost | reordered | p50 ms | p99 ms | p99.9 ms | node CPU s / M deliveries |")
print("|---|---|---|---|---|---|---|---|---|")
for wire in ("sse", "ws"):
    for setup in ("one-node", "redis-3", "nats-3"):
        r = json.load(open(f"{out}/cluster-{setup}-{wire}.json"))
        s = r["steps"][0]
        print(f"| {setup} | {wire} | {s['deliveries_per_s']:.0f} | {s['lost']} | {s['reordered']} | "
              f"{s['latency_p50_ms']:.1f} | {s['latency_p99_ms']:.1f} | {s['latency_p999_ms']:.1f} | "
              f"{s['server_cpu_s_per_million']:.1f} |")
EOF
echo "wrote $DOC" >&2
