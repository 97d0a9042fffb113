#!/usr/bin/env bash
# tidings against nginx + nchan, side by side, in one run on this machine:
# installs nginx and the nchan module (Debian packages) if missing, starts
# the servers on loopback ports, runs the same scenarios against each, one
# after the other, over SSE and over WebSocket, and writes
# docs/performance.md with the tables, ratios and charts. tidings runs twice:
# with its defaults, and with `hub.write_interval=0s` (every publication
# written as it comes, as nchan does). Over WebSocket, tidings is also
# measured with permessage-deflate against itself without it.
#
#   scripts/bench-vs-nchan.sh            # full run (a few minutes)
#   QUICK=1 scripts/bench-vs-nchan.sh    # short steps, to check the setup
#   REPORT_ONLY=1 scripts/bench-vs-nchan.sh  # rewrite the page from docs/performance/*.json
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${QUICK:-}" ]; then
  DURATION=2s; FANOUT_DURATION=2s; RAMP_STEPS=3; IDLE_CHANNELS=10; OUT_DIR=$(mktemp -d); DOC=$OUT_DIR/performance.md
else
  DURATION=5s; FANOUT_DURATION=10s; RAMP_STEPS=8; IDLE_CHANNELS=100; OUT_DIR=docs/performance; DOC=docs/performance.md
fi
mkdir -p "$OUT_DIR"

if [ ! -f /usr/lib/nginx/modules/ngx_nchan_module.so ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nginx-light libnginx-mod-nchan >/dev/null
fi
cargo build --release --quiet --workspace
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

RUN=$(mktemp -d)
TIDINGS_PORT=18900
NCHAN_PORT=18901
TIDINGS0_PORT=18902
API_KEY=bench-api-key
stop_servers() {
  for pid in ${TIDINGS_PID:-} ${TIDINGS0_PID:-}; do kill "$pid" 2>/dev/null || true; done
  [ -f "$RUN/nginx.pid" ] && kill "$(cat "$RUN/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  TIDINGS_PID=""; TIDINGS0_PID=""
}
trap 'stop_servers; rm -rf "$RUN"' EXIT

# Fresh servers for each wire, so that memory per connection is measured
# on a process that has not served a load yet.
start_servers() {
  rm -rf "$RUN/tidings"
  sed -e "s#NCHAN_MODULE#/usr/lib/nginx/modules/ngx_nchan_module.so#" \
      -e "s#RUN_DIR#$RUN#g" -e "s#PORT#$NCHAN_PORT#" bench/nchan.conf > "$RUN/nchan.conf"
  nginx -c "$RUN/nchan.conf" -p "$RUN" &
  # In-memory history, like nchan's message buffer (the disk store's
  # durable commits are measured in docs/decisions.md).
  # Compression is agreed only with clients that offer it (`--ws-compress`).
  local serve=(serve --history memory --log-level warn --set demo=false
    --set centrifugo.api_key=$API_KEY --set centrifugo.channel.allow_subscribe=true
    --set centrifugo.websocket_compression=true)
  target/release/tidings "${serve[@]}" --listen "127.0.0.1:$TIDINGS_PORT" --data-dir "$RUN/tidings" >/dev/null &
  TIDINGS_PID=$!
  target/release/tidings "${serve[@]}" --listen "127.0.0.1:$TIDINGS0_PORT" --data-dir "$RUN/tidings0" \
    --set hub.write_interval=0s >/dev/null &
  TIDINGS0_PID=$!
  for port in $TIDINGS_PORT $TIDINGS0_PORT $NCHAN_PORT; do
    for _ in $(seq 50); do
      (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
      sleep 0.1
    done
  done
  for _ in $(seq 50); do [ -s "$RUN/nginx.pid" ] && break; sleep 0.1; done
  local master
  master=$(cat "$RUN/nginx.pid")
  NGINX_PIDS="$master $(pgrep -P "$master" | tr '\n' ' ')"
}

bench() { # name server wire args...
  local name=$1 server=$2 wire=$3; shift 3
  local target pids url label extra=""
  if [ "$server" = tidings ]; then
    target=tidings-$wire; url=http://127.0.0.1:$TIDINGS_PORT; pids="--pid $TIDINGS_PID"; label=tidings
  elif [ "$server" = tidingsz ]; then
    target=tidings-$wire; url=http://127.0.0.1:$TIDINGS_PORT; pids="--pid $TIDINGS_PID"
    label="tidings, permessage-deflate"; extra=--ws-compress
  elif [ "$server" = tidings0 ]; then
    target=tidings-$wire; url=http://127.0.0.1:$TIDINGS0_PORT; pids="--pid $TIDINGS0_PID"
    label="tidings, write_interval=0s"
  else
    target=nchan-$wire; url=http://127.0.0.1:$NCHAN_PORT; pids=""; label=nchan
    for p in $NGINX_PIDS; do pids="$pids --pid $p"; done
  fi
  echo "== $name: $server over $wire" >&2
  # shellcheck disable=SC2086
  target/release/tidings bench --quiet --target "$target" --url "$url" $pids --label "$label" $extra \
    --set centrifugo.api_key=$API_KEY --scenario "$name" \
    --json "$OUT_DIR/$name-$server-$wire.json" "$@" >&2
}

for wire in sse ws; do
  [ -n "${REPORT_ONLY:-}" ] && break # rewrite the page from the last run's reports
  start_servers
  for server in tidings nchan; do
    bench idle "$server" $wire --channels $IDLE_CHANNELS --subscribers 100 --rate 0
  done
  for server in tidings tidings0 nchan; do
    bench fanout "$server" $wire --channels 1 --subscribers 1000 --rate 100 --payload 100 --duration $FANOUT_DURATION
    bench ramp "$server" $wire --channels 10 --subscribers 100 --rate 1000 --payload 100 \
      --duration $DURATION --ramp 1.5 --ramp-steps $RAMP_STEPS --ramp-p99 50ms --publishers 10
  done
  if [ $wire = ws ]; then
    for size in 100 1000; do
      for server in tidingsz tidings; do
        bench deflate-$size "$server" ws --channels 1 --subscribers 1000 --rate 100 --payload $size \
          --duration $FANOUT_DURATION
      done
    done
  fi
  stop_servers
done

{
  echo "# Performance"
  echo
  echo "tidings against nginx + nchan on the same machine, in the same run, one server after the"
  echo "other, with the same load generator (\`tidings bench\`). Written by"
  echo "\`scripts/bench-vs-nchan.sh\`$([ -n "${QUICK:-}" ] && echo " (QUICK mode)") on $(date -u +%Y-%m-%d)."
  echo
  echo "## Machine"
  echo
  echo "- $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "- $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) memory; Linux $(uname -r)"
  echo "- tidings $(target/release/tidings --version | cut -d' ' -f2) (release build, \`demo=false\`, in-memory history like nchan's buffer),"
  echo "  with its defaults (\`hub.write_interval=20ms\`) and with \`hub.write_interval=0s\`;"
  echo "  nginx $(nginx -v 2>&1 | cut -d/ -f2) with libnginx-mod-nchan $(dpkg-query -W -f='${Version}' libnginx-mod-nchan 2>/dev/null), 2 workers (bench/nchan.conf)"
  echo "- The bench runs on the same cores as the server; its own CPU time is in the tables."
  echo
  echo "## Scenarios"
  echo
  echo "1. **fanout**: 1 channel × 1000 subscribers, 100 publications/s, 100-byte payload, $FANOUT_DURATION."
  echo "2. **ramp**: 10 channels × 100 subscribers, from 1000 publications/s, ×1.5 per $DURATION step"
  echo "   while nothing is lost, p99 < 50 ms and the offered rate is achieved (at most $RAMP_STEPS steps);"
  echo "   the table shows the last good step (the knee)."
  echo "3. **idle**: $((IDLE_CHANNELS * 100)) idle connections: server memory per connection."
  echo
  echo "Commands (see the script for the exact flags; the load generator is its own crate,"
  echo "\`cargo build --release --workspace\` builds it beside \`tidings\`, and \`tidings bench\` runs it):"
  echo
  echo '```sh'
  echo "tidings bench --target tidings-sse --url http://127.0.0.1:$TIDINGS_PORT --pid <pid> --channels 1 --subscribers 1000 --rate 100 --duration $FANOUT_DURATION"
  echo "tidings bench --target nchan-ws --url http://127.0.0.1:$NCHAN_PORT --pid <worker> --pid <worker> --channels 10 --subscribers 100 --rate 1000 --ramp 1.5 --ramp-p99 50ms"
  echo '```'
  echo
  echo "## Results"
  echo
  for wire in sse ws; do
    for name in idle fanout ramp; do
      reports=("$OUT_DIR/$name-tidings-$wire.json")
      if [ "$name" != idle ]; then reports+=("$OUT_DIR/$name-tidings0-$wire.json"); fi
      target/release/tidings bench --compare "${reports[@]}" "$OUT_DIR/$name-nchan-$wire.json" \
        --chart "$OUT_DIR/$name-$wire.svg"
      if [ "$name" != idle ]; then
        echo "![$name over $wire](performance/$name-$wire.svg)"
        echo
      fi
    done
  done
  echo "## WebSocket compression"
  echo
  echo "tidings over WebSocket with permessage-deflate (\`centrifugo.websocket_compression=true\`,"
  echo "level 1, the bench's subscribers offering it) against itself without, in the fanout scenario"
  echo "with 100-byte and 1000-byte payloads of words (text that compresses like real messages)."
  echo
  for size in 100 1000; do
    target/release/tidings bench --compare "$OUT_DIR/deflate-$size-tidingsz-ws.json" \
      "$OUT_DIR/deflate-$size-tidings-ws.json"
  done
  echo "## Raw reports"
  echo
  echo "Every run's JSON report (all steps of the ramps, latency curves) is in \`docs/performance/\`."
  echo
  cat bench/notes.md
} > "$DOC"
echo "wrote $DOC" >&2
