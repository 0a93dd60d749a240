#!/usr/bin/env bash
# Scale-out benchmark: three archway replicas in a [cluster] on one S3 bucket (moto) against
# one replica alone, and cached blobs by redirect against streaming through archway.
# Everything runs on 127.0.0.1.
#
#   benches/cluster.sh                 # 16 concurrent cold pulls per replica
#   HERD=8 benches/cluster.sh
#
# Needs: docker-registry, moto_server (`make test-deps` installs it under
# /opt/archway-test-tools), curl. Prints a Markdown table for benches/README.md. Clients,
# replicas, moto and the upstream share the machine's cores: compare the ratios of one run.
set -euo pipefail
cd "$(dirname "$0")/.."

HERD=${HERD:-16}
TOOLS=${ARCHWAY_TEST_TOOLS:-/opt/archway-test-tools}
# moto, with conditional writes decided atomically as S3 decides them (the leases need it).
PYTHON=$TOOLS/venv/bin/python
[ -x "$PYTHON" ] || PYTHON=python3
"$PYTHON" -c 'import moto.server' 2>/dev/null || { echo "moto missing: make test-deps" >&2; exit 1; }

cargo build --release --quiet --bin archway --example benchtool
ARCHWAY=target/release/archway
TOOL=target/release/examples/benchtool

# shellcheck source=benches/lib.sh
source benches/lib.sh
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# --- upstream -----------------------------------------------------------------------------
start_upstream

S3_PORT=$(free_port)
"$PYTHON" tests/it/support/moto_atomic.py -H 127.0.0.1 -p "$S3_PORT" >"$WORK/moto.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$S3_PORT/"
curl -sf -X PUT "http://127.0.0.1:$S3_PORT/bench" >/dev/null
echo "test-secret" > "$WORK/s3-secret"
head -c 32 /dev/urandom | base64 > "$WORK/cluster-secret"

# replica NAME PREFIX CLUSTER(yes|no) EXTRA-STORAGE-KEYS: starts one; sets URL and PID.
replica() {
  local port cluster=""
  port=$(free_port)
  if [ "$3" = yes ]; then
    cluster="[cluster]
advertise = \"http://127.0.0.1:$port\"
secret_file = \"$WORK/cluster-secret\"
lease_ttl = \"15s\""
  fi
  cat > "$WORK/$1.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
[storage]
url = "s3://bench/$2"
spool_dir = "$WORK/spool-$1"
$4
[storage.s3]
endpoint = "http://127.0.0.1:$S3_PORT"
region = "us-east-1"
allow_http = true
access_key_id = "test"
secret_access_key_file = "$WORK/s3-secret"
[cache]
tag_ttl = "1h"
[[upstream]]
name = "up"
url = "$UP"
hosts = ["upstream.test"]
default = true
$cluster
EOF
  ARCHWAY_LOG=warn $ARCHWAY serve --config "$WORK/$1.toml" >"$WORK/$1.log" 2>&1 &
  PID=$!
  PIDS+=($PID)
  URL=http://127.0.0.1:$port
  wait_http "$URL/v2/"
}

# herd REPO URL...: HERD concurrent cold pulls against each URL at once; wall seconds.
herd() {
  local repo=$1; shift
  local start end jobs=()
  start=$(date +%s.%N)
  for u in "$@"; do $TOOL herd "$u" "$repo" v1 "$HERD" >/dev/null & jobs+=($!); done
  for j in "${jobs[@]}"; do wait "$j"; done
  end=$(date +%s.%N)
  awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }'
}

# Bytes the upstream sent for blob GETs of REPO (its access log, combined format).
upstream_bytes() { grep "\"GET /v2/$1/blobs/" "$WORK/registry.log" | awk '{ for (i=1;i<=NF;i++) if ($i ~ /^HTTP\/1\.1"$/) { s+=$(i+2); break } } END { print s+0 }'; }
image_bytes() { # sum of the image's blob sizes
  local m; m=$(curl -sf -H 'accept: application/vnd.oci.image.manifest.v1+json' "$UP/v2/$1/manifests/v1")
  python3 -c 'import json,sys; m=json.loads(sys.argv[1]); print(m["config"]["size"]+sum(l["size"] for l in m["layers"]))' "$m"
}

replica a shared yes ""; A=$URL; PA=$PID
replica b shared yes ""; B=$URL
replica c shared yes ""; C=$URL
replica solo solo no ""; SOLO=$URL

# --- 3 replicas x HERD concurrent cold pulls, and the same number against one replica -------
$TOOL push "$UP" herd/three v1 1,10,50 >/dev/null
$TOOL push "$UP" herd/one v1 1,10,50 >/dev/null
THREE_TIME=$(herd herd/three "$A" "$B" "$C")
ONE_TIME=$(herd herd/one "$SOLO" "$SOLO" "$SOLO")
IMG=$(image_bytes herd/three)
THREE_UP=$(upstream_bytes herd/three)
ONE_UP=$(upstream_bytes herd/one)
GETS=$(grep -c "\"GET /v2/herd/three/blobs/" "$WORK/registry.log" || true)

# --- cached blob: redirect vs streamed through archway --------------------------------------
replica redirect shared no 'redirect = "10m"'; R=$URL; PR=$PID
mapfile -t FIX < <($TOOL push "$UP" bench/app v1 50)
BLOB=${FIX[1]}
$TOOL pull "$A" bench/app v1 >/dev/null     # cached in the shared bucket
$TOOL fetch "$R/v2/bench/app/blobs/$BLOB" "$BLOB" 1 1 >/dev/null   # links it for R
t0=$(cpu_ticks "$PA"); STREAM=$($TOOL fetch "$A/v2/bench/app/blobs/$BLOB" "$BLOB" 16 4 | cut -d' ' -f1); t1=$(cpu_ticks "$PA")
r0=$(cpu_ticks "$PR"); REDIRECT=$($TOOL fetch "$R/v2/bench/app/blobs/$BLOB" "$BLOB" 16 4 | cut -d' ' -f1); r1=$(cpu_ticks "$PR")
HZ=$(getconf CLK_TCK)

cat <<EOF
| metric | value | against | ratio | aim |
|---|---|---|---|---|
| 3 replicas x $HERD cold pulls: upstream bytes / image bytes | $THREE_UP / $IMG | | $(ratio "$THREE_UP" "$IMG") | 1.00 |
| 3 replicas x $HERD cold pulls: upstream blob GETs | $GETS | | | 4 |
| 1 replica x $((3 * HERD)) cold pulls: upstream bytes / image bytes | $ONE_UP / $IMG | | $(ratio "$ONE_UP" "$IMG") | 1.00 |
| wall time, 3 replicas vs 1 replica, $((3 * HERD)) pulls (s) | $THREE_TIME | $ONE_TIME | $(ratio "$THREE_TIME" "$ONE_TIME") | |
| cached 50 MiB blob, 4 conns, redirect vs through archway (MB/s) | $REDIRECT | $STREAM | $(ratio "$REDIRECT" "$STREAM") | |
| archway CPU for those 16 GETs, redirect vs through archway (s) | $(awk -v a="$r0" -v b="$r1" -v h="$HZ" 'BEGIN{printf "%.2f",(b-a)/h}') | $(awk -v a="$t0" -v b="$t1" -v h="$HZ" 'BEGIN{printf "%.2f",(b-a)/h}') | | |

herd=$HERD cores=$(nproc); S3 is moto (Python, one process), which bounds both blob paths.
EOF
