#!/usr/bin/env bash
# Soak: about 1,000 concurrent clients pulling 50 images through archway for 5 minutes, a
# mix of cached and cold pulls (a fresh image is pushed to the upstream every second and one
# pull in 8 takes the newest, so a cold fill joined by many clients starts every second),
# every blob verified by the client. Everything on 127.0.0.1.
#
#   benches/soak.sh                          # 1000 clients, 50 images, 300 s
#   CLIENTS=200 DURATION=60 benches/soak.sh  # a shorter run
#   WARM=1 benches/soak.sh                   # every image pulled once first: no cold burst
#   ARCHWAY=/tmp/archway-old benches/soak.sh # another build's binary, for an A/B
#
# Reports errors (must be 0), latency percentiles, the upstream fetches the soak caused, and
# archway's anonymous memory over time (flat, at most 64 MiB). Prints Markdown for
# benches/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-1000}
IMAGES=${IMAGES:-50}
WARM=${WARM:-0}
DURATION=${DURATION:-300}
command -v docker-registry >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry
}
cargo build --release --quiet --bin archway --example benchtool
ARCHWAY=${ARCHWAY:-target/release/archway}
TOOL=target/release/examples/benchtool
# shellcheck source=benches/lib.sh
source benches/lib.sh
# Thousands of sockets on each side.
ulimit -n "$(ulimit -Hn)"

start_upstream
# 50 images of about 1.75 MiB (layers of 0.25, 0.5 and 1 MiB).
for i in $(seq 0 $((IMAGES - 1))); do $TOOL push "$UP" "soak/app$i" v1 0.25,0.5,1 >/dev/null; done

AW_PORT=$(free_port)
archway_config "$WORK/archway.toml" "$AW_PORT" 1m
# As it ships: logging at info, an access-log line per request, here to /dev/null.
env -u ARCHWAY_LOG -u RUST_LOG $ARCHWAY serve --config "$WORK/archway.toml" 2>"$WORK/archway.log" >/dev/null &
AW_PID=$!
PIDS+=($AW_PID)
AW=http://127.0.0.1:$AW_PORT
wait_http "$AW/v2/"
anon() { awk '/RssAnon/ {print int($2/1024)}' "/proc/$AW_PID/status"; }
# WARM=1 takes the images' cold fills out of the first seconds, so that what the clients'
# connections cost is seen apart from what their fills (4 per image) starting together cost.
if [ "$WARM" = 1 ]; then
  for i in $(seq 0 $((IMAGES - 1))); do $TOOL pull "$AW" "soak/app$i" v1 >/dev/null; done
fi
ANON_IDLE=$(anon)

# Anonymous memory every second while the soak runs.
( s=0; while kill -0 "$AW_PID" 2>/dev/null; do echo "$s $(anon)" >> "$WORK/anon"; s=$((s + 1)); sleep 1; done ) &
PIDS+=($!)
BEFORE=$(grep -c '"GET /v2/soak/app[a-z0-9]*/blobs/' "$WORK/registry.log" || true)
$TOOL soak "$AW" soak/app "$IMAGES" "$CLIENTS" "$DURATION" "$UP" > "$WORK/soak.out"
AFTER=$(grep -c '"GET /v2/soak/app[a-z0-9]*/blobs/' "$WORK/registry.log" || true)
ANON_END=$(anon)
val() { awk -v k="$1" -v f="$2" '$1 == k {print $f}' "$WORK/soak.out"; }
WARNINGS=$(grep -c ' WARN \| ERROR ' "$WORK/archway.log" || true)
# Anonymous memory: the most of each minute.
PER_MINUTE=$(awk '{m = int($1 / 60); if ($2 > max[m]) max[m] = $2} END {for (i = 0; i in max; i++) printf "%s%d", (i ? " / " : ""), max[i]}' "$WORK/anon")
# The first seconds' burst: 1,000 clients arriving together and the 50 images' cold fills.
FIRST_SECONDS=$(awk '$1 >= 1 && $1 <= 5 {printf "%s%d", ($1 > 1 ? " / " : ""), $2}' "$WORK/anon")
ANON_MAX=$(awk '$2 > m {m = $2} END {print m}' "$WORK/anon")

cat <<MD
| metric | value |
|---|---|
| clients / images / seconds | $CLIENTS / $IMAGES / $DURATION$( [ "$WARM" = 1 ] && echo " (images pulled once first)") |
| pulls (each: manifest, config, 3 layers, verified) | $(val pulls 2) |
| requests | $(val requests 2) |
| errors | $(val errors 2) |
| manifest GET p50 / p99 / max (ms) | $(val manifest_ms 3) / $(val manifest_ms 5) / $(val manifest_ms 7) |
| blob GET p50 / p99 / max (ms) | $(val blob_ms 3) / $(val blob_ms 5) / $(val blob_ms 7) |
| whole pull p50 / p99 / max (ms) | $(val pull_ms 3) / $(val pull_ms 5) / $(val pull_ms 7) |
| fresh images pushed to the upstream during the soak (one pull in 8 takes the newest) | $(val fresh 2) |
| upstream blob GETs during the soak (cold fills: 4 per fresh image, and the $IMAGES at the start) | $((AFTER - BEFORE)) |
| archway warnings and errors logged | $WARNINGS |
| archway anonymous memory idle / max / after (MiB) | $ANON_IDLE / $ANON_MAX / $ANON_END |
| archway anonymous memory, the most of each minute (MiB) | $PER_MINUTE |
| archway anonymous memory, seconds 1 to 5 (MiB) | $FIRST_SECONDS |

cores=$(nproc); client, archway and the upstream share them.
MD
grep '^error:' "$WORK/soak.out" || true
# What archway warned about, if anything (the first few distinct messages).
grep ' WARN \| ERROR ' "$WORK/archway.log" | sed 's/^[^ ]* *//' | cut -c1-240 | sort | uniq -c | sort -rn | head -5 || true
