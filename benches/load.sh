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
archway_config "$WORK/archway.toml" "$AW_PORT" 1h
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
AW_WARN_PID=$!
PIDS+=($AW_WARN_PID)
AW_WARN=http://127.0.0.1:$AW_WARN_PORT
wait_http "$AW_WARN/v2/"
# Anonymous memory (heap, buffers): what the process holds. The file-backed rest of its RSS
# is page cache mapped while cached blobs are sent, which the kernel reclaims at will.
rss() { awk '/RssAnon/ {print int($2/1024)}' /proc/$AW_PID/status; }
rss_file() { awk '/RssFile/ {print int($2/1024)}' /proc/$AW_PID/status; }
# CPU time (clock ticks, user + system, all threads) of the given processes.
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
HZ=$(getconf CLK_TCK)
RSS_IDLE=$(rss)

# --- cold pulls: direct vs through archway, a fresh image each rep --------------------------
# Pinned as in production, where the mirror shares no CPU with its clients: archway on core 1,
# the upstream and the client on core 0 (in both the direct and the mirrored pull). `sync`
# first, so writeback of the pushed fixture does not land inside the timed pull.
PIN=$([ "$(nproc)" -ge 2 ] && echo yes || echo no)
if [ "$PIN" = yes ]; then
  taskset -apc 1 "$AW_PID" >/dev/null
  for p in $(pgrep -f "docker-registry serve $WORK/registry.yml"); do taskset -apc 0 "$p" >/dev/null; done
  CLIENT=(taskset -c 0 "$TOOL")
else
  CLIENT=("$TOOL")
fi
# Two images: 61 MiB (layers of 1, 10, 50 MiB) and 272 MiB (8, 64, 200 MiB), uncompressed
# random bytes, fresh each rep. Reported: the median time of each, and archway's CPU per GB
# of fill over all reps of the large one.
cold() { # name sizes -> sets COLD_<name>_DIRECT, COLD_<name>_THROUGH, COLD_<name>_CPU_GB
  local direct=() through=() t0 t1 bytes=0 i
  t0=$(ticks "$AW_PID")
  for i in $(seq "$REPS"); do
    $TOOL push "$UP" "cold/$1$i" v1 "$2" >/dev/null
    sync
    direct+=("$("${CLIENT[@]}" pull "$UP" "cold/$1$i" v1 | cut -d' ' -f1)")
    sync
    through+=("$("${CLIENT[@]}" pull "$AW" "cold/$1$i" v1 | cut -d' ' -f1)")
    bytes=$((bytes + $(echo "$2" | tr ',' '\n' | awk '{s += $1} END {print s * 1048576}')))
  done
  t1=$(ticks "$AW_PID")
  printf -v "COLD_${1}_DIRECT" %s "$(printf '%s\n' "${direct[@]}" | median)"
  printf -v "COLD_${1}_THROUGH" %s "$(printf '%s\n' "${through[@]}" | median)"
  printf -v "COLD_${1}_CPU_GB" %s "$(awk -v t=$((t1 - t0)) -v hz="$HZ" -v b="$bytes" 'BEGIN { printf "%.2f", t / hz / (b / 1e9) }')"
}
cold small 1,10,50
cold large 8,64,200
# The load points below share both cores again.
[ "$PIN" = yes ] && taskset -apc 0-$(($(nproc) - 1)) "$AW_PID" >/dev/null
[ "$PIN" = yes ] && for p in $(pgrep -f "docker-registry serve $WORK/registry.yml"); do taskset -apc 0-$(($(nproc) - 1)) "$p" >/dev/null; done

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
NG_MASTER=$(cat "$WORK/nginx/nginx.pid")
mapfile -t NG_PIDS < <(echo "$NG_MASTER"; pgrep -P "$NG_MASTER")
# Both servers must answer 200 with the same bytes before anything is measured.
for path in "manifests/v1" "blobs/$BLOB"; do
  a=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' "$AW/v2/bench/app/$path")
  n=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' "$NG/v2/bench/app/$path")
  [ "$a" = "$n" ] && [ "${a%% *}" = 200 ] || { echo "archway ($a) and nginx ($n) differ on $path" >&2; exit 1; }
done

# wrk: requests/s (req) or MB/s of body (mb), and the server's CPU for it: microseconds per
# request (req) or milliseconds per GB (mb). `point` prints "rate cpu", medians over reps.
run_wrk() { # url conns kind pids...
  local url=$1 conns=$2 kind=$3; shift 3
  local t0 t1 out
  t0=$(ticks "$@")
  out=$(wrk -t2 -c"$conns" -d"${DURATION}s" "$url")
  t1=$(ticks "$@")
  echo "$out" | awk -v kind="$kind" -v t=$((t1 - t0)) -v hz="$HZ" '
    /requests in/ { n = $1; v = $5; u = substr(v, length(v) - 1); m = substr(v, 1, length(v) - 2);
      mb = (u == "GB") ? m * 1024 : (u == "MB") ? m : (u == "KB") ? m / 1024 : m / 1048576 }
    /Requests\/sec/ { rps = $2 }
    /Transfer\/sec/ { v = $2; u = substr(v, length(v) - 1); m = substr(v, 1, length(v) - 2);
      rate = (u == "GB") ? m * 1024 : (u == "MB") ? m : m / 1024 }
    END {
      if (kind == "req") printf "%.0f %.1f\n", rps, t / hz * 1e6 / n;
      else printf "%.0f %.0f\n", rate * 1.048576, t / hz * 1e3 / (mb * 1.048576 / 1000) }'
}
point() { # name url conns kind
  local rates=() cpus=() r c pids
  case $1 in nginx) pids=("${NG_PIDS[@]}") ;; archway-warn) pids=("$AW_WARN_PID") ;; *) pids=("$AW_PID") ;; esac
  for _ in $(seq "$REPS"); do
    read -r r c < <(run_wrk "$2" "$3" "$4" "${pids[@]}")
    rates+=("$r"); cpus+=("$c")
  done
  echo "$(printf '%s\n' "${rates[@]}" | median) $(printf '%s\n' "${cpus[@]}" | median)"
}

# Sample archway's RSS every 200 ms while the load runs.
( while kill -0 "$AW_PID" 2>/dev/null; do rss >> "$WORK/rss"; sleep 0.2; done ) &
PIDS+=($!)
read -r NG_TAG NG_TAG_CPU < <(point nginx "$NG/v2/bench/app/manifests/v1" 64 req)
read -r AW_TAG AW_TAG_CPU < <(point archway "$AW/v2/bench/app/manifests/v1" 64 req)
read -r AW_DIG AW_DIG_CPU < <(point archway "$AW/v2/bench/app/manifests/$MANIFEST_DIGEST" 64 req)
read -r AW_WARN_TAG AW_WARN_TAG_CPU < <(point archway-warn "$AW_WARN/v2/bench/app/manifests/v1" 64 req)
read -r NG_B8 NG_B8_CPU < <(point nginx "$NG/v2/bench/app/blobs/$BLOB" 8 mb)
read -r AW_B8 AW_B8_CPU < <(point archway "$AW/v2/bench/app/blobs/$BLOB" 8 mb)
read -r NG_B64 NG_B64_CPU < <(point nginx "$NG/v2/bench/app/blobs/$BLOB" 64 mb)
read -r AW_B64 AW_B64_CPU < <(point archway "$AW/v2/bench/app/blobs/$BLOB" 64 mb)
RSS_END=$(rss)
RSS_MAX=$(sort -n "$WORK/rss" | tail -1)
RSS_FILE_END=$(rss_file)
# What a keep-alive connection holds at rest (hyper's read and write buffers, its task).
ulimit -n "$(ulimit -Hn)"
read -r _ IDLE_PER_CONN < <($TOOL idle "127.0.0.1:$AW_PORT" 2000 "$AW_PID")

cat <<EOF
| metric | archway | nginx / direct | ratio |
|---|---|---|---|
| cached manifest GET by tag, 64 conns (req/s) | $AW_TAG | $NG_TAG | $(ratio "$AW_TAG" "$NG_TAG") |
| server CPU per manifest GET by tag (µs) | $AW_TAG_CPU | $NG_TAG_CPU | $(ratio "$AW_TAG_CPU" "$NG_TAG_CPU") |
| cached manifest GET by digest, 64 conns (req/s) | $AW_DIG | $NG_TAG | $(ratio "$AW_DIG" "$NG_TAG") |
| server CPU per manifest GET by digest (µs) | $AW_DIG_CPU | $NG_TAG_CPU | $(ratio "$AW_DIG_CPU" "$NG_TAG_CPU") |
| cached manifest GET by tag, logging at warn, 64 conns (req/s) | $AW_WARN_TAG | $NG_TAG | $(ratio "$AW_WARN_TAG" "$NG_TAG") |
| server CPU per manifest GET, logging at warn (µs) | $AW_WARN_TAG_CPU | $NG_TAG_CPU | $(ratio "$AW_WARN_TAG_CPU" "$NG_TAG_CPU") |
| cached 50 MiB blob, 8 conns (MB/s) | $AW_B8 | $NG_B8 | $(ratio "$AW_B8" "$NG_B8") |
| server CPU per GB of blob, 8 conns (ms) | $AW_B8_CPU | $NG_B8_CPU | $(ratio "$AW_B8_CPU" "$NG_B8_CPU") |
| cached 50 MiB blob, 64 conns (MB/s) | $AW_B64 | $NG_B64 | $(ratio "$AW_B64" "$NG_B64") |
| server CPU per GB of blob, 64 conns (ms) | $AW_B64_CPU | $NG_B64_CPU | $(ratio "$AW_B64_CPU" "$NG_B64_CPU") |
| cold pull of a 61 MiB image, pinned=$PIN (s) | $COLD_small_THROUGH | $COLD_small_DIRECT (direct) | $(ratio "$COLD_small_THROUGH" "$COLD_small_DIRECT") |
| cold pull of a 272 MiB image, pinned=$PIN (s) | $COLD_large_THROUGH | $COLD_large_DIRECT (direct) | $(ratio "$COLD_large_THROUGH" "$COLD_large_DIRECT") |
| archway CPU per GB of cold fill, 61 / 272 MiB images (s) | $COLD_small_CPU_GB / $COLD_large_CPU_GB | | |
| 16 concurrent cold pulls: upstream GETs of the 50 MiB layer | $HERD_GETS | | |
| 16 concurrent cold pulls: upstream blob GETs, all 4 blobs | $ALL_GETS | | |
| 16 concurrent cold pulls: wall time (s) | $HERD_TIME | | |
| archway anonymous memory idle / max under load / after (MiB) | $RSS_IDLE / $RSS_MAX / $RSS_END | | |
| archway file-backed RSS after the load (MiB, mapped page cache) | $RSS_FILE_END | | |
| archway anonymous memory per idle keep-alive connection, 2,000 open (KiB) | $IDLE_PER_CONN | | |

reps=$REPS duration=${DURATION}s cores=$(nproc) wrk -t2; archway logging at info (access log on, to /dev/null) unless noted, nginx access_log off. Server CPU: user + system time of all the server's threads (nginx: master and workers) during the wrk run, which shares the 2 cores.
EOF
