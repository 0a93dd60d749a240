#!/usr/bin/env bash
# Load benchmark: archway against nginx serving the same bytes as static files, and cold pulls
# through archway against pulls straight from the upstream. Everything runs on 127.0.0.1.
#
#   benches/load.sh            # 3 reps of 6 s per load point (about 4 minutes)
#   REPS=1 DURATION=3 benches/load.sh
#
# Needs: docker-registry, nginx (nginx-light), wrk; installs them when missing (Debian, root).
# Prints a Markdown table for benches/README.md. Client and servers share the machine's cores:
# compare the ratios of one run, not absolute numbers across machines.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}
DURATION=${DURATION:-6}
need=()
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v nginx >/dev/null || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

cargo build --release --quiet --bin archway --example benchtool
ARCHWAY=target/release/archway
TOOL=target/release/examples/benchtool

# shellcheck source=benches/lib.sh
source benches/lib.sh
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# --- upstream -----------------------------------------------------------------------------
start_upstream

# --- archway ------------------------------------------------------------------------------
AW_PORT=$(free_port)
cat > "$WORK/archway.toml" <<EOF
[server]
listen = "127.0.0.1:$AW_PORT"
[storage]
url = "file://$WORK/cache"
spool_dir = "$WORK/spool"
[cache]
tag_ttl = "1h"
[[upstream]]
name = "up"
url = "$UP"
hosts = ["upstream.test"]
default = true
EOF
# As it ships: logging at info, one access-log line per request, to a pipe's reader as
# under a container runtime (here /dev/null, so the figures hold no disk writes).
env -u ARCHWAY_LOG -u RUST_LOG $ARCHWAY serve --config "$WORK/archway.toml" >/dev/null 2>&1 &
AW_PID=$!
PIDS+=($AW_PID)
AW=http://127.0.0.1:$AW_PORT
wait_http "$AW/v2/"
# The same cache served by a second process logging at warn: what the access log costs.
AW_WARN_PORT=$(free_port)
sed "s/127.0.0.1:$AW_PORT/127.0.0.1:$AW_WARN_PORT/" "$WORK/archway.toml" > "$WORK/archway-warn.toml"
ARCHWAY_LOG=warn $ARCHWAY serve --config "$WORK/archway-warn.toml" >"$WORK/archway-warn.log" 2>&1 &
PIDS+=($!)
AW_WARN=http://127.0.0.1:$AW_WARN_PORT
wait_http "$AW_WARN/v2/"
rss() { awk '/VmRSS/ {print int($2/1024)}' /proc/$AW_PID/status; }
RSS_IDLE=$(rss)

# --- cold pulls: direct vs through archway, a fresh image each rep --------------------------
# Pinned as in production, where the mirror shares no CPU with its clients: archway on core 1,
# the upstream and the client on core 0 (in both the direct and the mirrored pull). `sync`
# first, so writeback of the pushed fixture does not land inside the timed pull.
PIN=$([ "$(nproc)" -ge 2 ] && echo yes || echo no)
if [ "$PIN" = yes ]; then
  taskset -pc 1 "$AW_PID" >/dev/null
  for p in $(pgrep -f "docker-registry serve $WORK/registry.yml"); do taskset -pc 0 "$p" >/dev/null; done
  CLIENT=(taskset -c 0 "$TOOL")
else
  CLIENT=("$TOOL")
fi
direct=(); through=()
for i in $(seq "$REPS"); do
  $TOOL push "$UP" "cold/app$i" v1 1,10,50 >/dev/null
  sync
  direct+=("$("${CLIENT[@]}" pull "$UP" "cold/app$i" v1 | cut -d' ' -f1)")
  sync
  through+=("$("${CLIENT[@]}" pull "$AW" "cold/app$i" v1 | cut -d' ' -f1)")
done
COLD_DIRECT=$(printf '%s\n' "${direct[@]}" | median)
COLD_THROUGH=$(printf '%s\n' "${through[@]}" | median)
# The load points below share both cores again.
[ "$PIN" = yes ] && taskset -pc 0-$(($(nproc) - 1)) "$AW_PID" >/dev/null
[ "$PIN" = yes ] && for p in $(pgrep -f "docker-registry serve $WORK/registry.yml"); do taskset -pc 0-$(($(nproc) - 1)) "$p" >/dev/null; done

# --- 16 concurrent cold pulls of one image --------------------------------------------------
mapfile -t HERD < <($TOOL push "$UP" herd/app v1 1,10,50)
HERD_TIME=$($TOOL herd "$AW" herd/app v1 16 | cut -d' ' -f1)
BIG=${HERD[3]}
HERD_GETS=$(grep -c "\"GET /v2/herd/app/blobs/$BIG " "$WORK/registry.log" || true)
ALL_GETS=$(grep -c "\"GET /v2/herd/app/blobs/" "$WORK/registry.log" || true)

# --- warm fixture: the image everyone serves ------------------------------------------------
mapfile -t IMG < <($TOOL push "$UP" bench/app v1 1,10,50)
MANIFEST_DIGEST=${IMG[0]}
BLOB=${IMG[3]}
$TOOL pull "$AW" bench/app v1 >/dev/null
curl -sf "$AW/v2/bench/app/manifests/$MANIFEST_DIGEST" >/dev/null

# nginx serves the same manifest and blob bytes as static files.
NG_PORT=$(free_port)
mkdir -p "$WORK/www/v2/bench/app/manifests" "$WORK/www/v2/bench/app/blobs" "$WORK/nginx"
curl -sf "$AW/v2/bench/app/manifests/v1" -o "$WORK/www/v2/bench/app/manifests/v1"
curl -sf "$AW/v2/bench/app/blobs/$BLOB" -o "$WORK/www/v2/bench/app/blobs/$BLOB"
cat > "$WORK/nginx/nginx.conf" <<EOF
user root;
worker_processes auto;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  default_type application/octet-stream;
  client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx; fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
  server { listen 127.0.0.1:$NG_PORT; root $WORK/www; }
}
EOF
nginx -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
NG=http://127.0.0.1:$NG_PORT
wait_http "$NG/v2/bench/app/manifests/v1"
# Both servers must answer 200 with the same bytes before anything is measured.
for path in "manifests/v1" "blobs/$BLOB"; do
  a=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' "$AW/v2/bench/app/$path")
  n=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' "$NG/v2/bench/app/$path")
  [ "$a" = "$n" ] && [ "${a%% *}" = 200 ] || { echo "archway ($a) and nginx ($n) differ on $path" >&2; exit 1; }
done

# wrk: requests/s, or MB/s of body for blobs.
reqs() { wrk -t2 -c"$2" -d"${DURATION}s" "$1" | awk '/Requests\/sec/ {print $2}'; }
mbps() {
  wrk -t2 -c"$2" -d"${DURATION}s" "$1" | awk '/Transfer\/sec/ {
    v=$2; u=substr(v, length(v)-1); n=substr(v, 1, length(v)-2);
    if (u=="GB") n*=1024; else if (u=="KB") n/=1024; printf "%.0f\n", n*1.048576 }'
}
point() { # name url conns kind
  local vals=()
  for _ in $(seq "$REPS"); do
    if [ "$4" = req ]; then vals+=("$(reqs "$2" "$3")"); else vals+=("$(mbps "$2" "$3")"); fi
  done
  printf '%s\n' "${vals[@]}" | median
}

# Sample archway's RSS every 200 ms while the load runs.
( while kill -0 "$AW_PID" 2>/dev/null; do rss >> "$WORK/rss"; sleep 0.2; done ) &
PIDS+=($!)
NG_TAG=$(point nginx "$NG/v2/bench/app/manifests/v1" 64 req)
AW_TAG=$(point archway "$AW/v2/bench/app/manifests/v1" 64 req)
AW_DIG=$(point archway "$AW/v2/bench/app/manifests/$MANIFEST_DIGEST" 64 req)
AW_WARN_TAG=$(point archway-warn "$AW_WARN/v2/bench/app/manifests/v1" 64 req)
NG_B8=$(point nginx "$NG/v2/bench/app/blobs/$BLOB" 8 mb)
AW_B8=$(point archway "$AW/v2/bench/app/blobs/$BLOB" 8 mb)
NG_B64=$(point nginx "$NG/v2/bench/app/blobs/$BLOB" 64 mb)
AW_B64=$(point archway "$AW/v2/bench/app/blobs/$BLOB" 64 mb)
RSS_END=$(rss)
RSS_MAX=$(sort -n "$WORK/rss" | tail -1)

cat <<EOF
| metric | archway | nginx / direct | ratio |
|---|---|---|---|
| cached manifest GET by tag, 64 conns (req/s) | $AW_TAG | $NG_TAG | $(ratio "$AW_TAG" "$NG_TAG") |
| cached manifest GET by digest, 64 conns (req/s) | $AW_DIG | $NG_TAG | $(ratio "$AW_DIG" "$NG_TAG") |
| cached manifest GET by tag, logging at warn, 64 conns (req/s) | $AW_WARN_TAG | $NG_TAG | $(ratio "$AW_WARN_TAG" "$NG_TAG") |
| cached 50 MiB blob, 8 conns (MB/s) | $AW_B8 | $NG_B8 | $(ratio "$AW_B8" "$NG_B8") |
| cached 50 MiB blob, 64 conns (MB/s) | $AW_B64 | $NG_B64 | $(ratio "$AW_B64" "$NG_B64") |
| cold pull of a 61 MiB image, pinned=$PIN (s) | $COLD_THROUGH | $COLD_DIRECT (direct) | $(ratio "$COLD_THROUGH" "$COLD_DIRECT") |
| 16 concurrent cold pulls: upstream GETs of the 50 MiB layer | $HERD_GETS | | |
| 16 concurrent cold pulls: upstream blob GETs, all 4 blobs | $ALL_GETS | | |
| 16 concurrent cold pulls: wall time (s) | $HERD_TIME | | |
| archway RSS idle / max under load / after (MiB) | $RSS_IDLE / $RSS_MAX / $RSS_END | | |

reps=$REPS duration=${DURATION}s cores=$(nproc) wrk -t2; archway logging at info (access log on, to /dev/null) unless noted, nginx access_log off.
EOF
