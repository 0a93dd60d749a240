# Shared by the benchmark scripts: temporary work directory, process cleanup, ports, and the
# upstream docker-registry. Source it after `cd` to the repository root.

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 400); do curl -s -o /dev/null "$1" && return 0; sleep 0.05; done; echo "not up: $1" >&2; exit 1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# Writes an archway config to $1: listening on 127.0.0.1:$2, a file:// cache under $WORK,
# tags fresh for $3, and the upstream of start_upstream as the default.
archway_config() {
  cat > "$1" <<TOML
[server]
listen = "127.0.0.1:$2"
[storage]
url = "file://$WORK/cache"
spool_dir = "$WORK/spool"
[cache]
tag_ttl = "$3"
[[upstream]]
name = "up"
url = "$UP"
hosts = ["upstream.test"]
default = true
TOML
}

# Starts docker-registry (distribution 2.8) on a free port with its access log on; sets UP.
start_upstream() {
  local port; port=$(free_port)
  cat > "$WORK/registry.yml" <<YML
version: 0.1
log: {level: info, accesslog: {disabled: false}}
storage: {filesystem: {rootdirectory: $WORK/registry}}
http: {addr: 127.0.0.1:$port}
YML
  docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
  PIDS+=($!)
  UP=http://127.0.0.1:$port
  wait_http "$UP/v2/"
}
