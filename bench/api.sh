#!/usr/bin/env bash
# API throughput with wrk on loopback: listing 100 grants (GET) and creating grants (POST).
# Starts `postern server` (release build) on a temporary data directory with a port chosen
# by the OS, seeds a router and 100 forwards through the API, runs wrk 10 s per case and
# prints the figures.
# Usage: bench/api.sh [sqlite|postgres|postgres://…]   (default sqlite; `postgres` starts a
# throwaway cluster from Debian's binaries on a Unix socket in a temporary directory)
# Environment: DURATION (10s), THREADS (2), CONNECTIONS (32), HISTORY (0: how many ended
# forwards to make first, to show that lists do not slow down as history grows).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
duration=${DURATION:-10s}
threads=${THREADS:-2}
connections=${CONNECTIONS:-32}
database=${1:-sqlite}
history=${HISTORY:-0}

command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl is missing" >&2; exit 1; }

cargo build --release -q -p postern-cli
bin=$CARGO_TARGET_DIR/release/postern

dir=$(mktemp -d)
chmod 755 "$dir"
pid=
pgdata=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  if [ -n "$pgdata" ]; then $as_pg "$pgbin/pg_ctl" -D "$pgdata" -m immediate stop >/dev/null 2>&1 || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT

if [ "$database" = postgres ]; then
  pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -x "$pgbin/initdb" ] || { echo "no PostgreSQL binaries: apt-get install postgresql" >&2; exit 1; }
  as_pg=
  if [ "$(id -u)" = 0 ]; then as_pg="setpriv --reuid=$(id -u nobody) --regid=$(id -g nobody) --clear-groups --"; fi
  mkdir "$dir/pg" && chown "$(id -u nobody 2>/dev/null || id -u)" "$dir/pg" 2>/dev/null || true
  pgdata=$dir/pg/data
  $as_pg "$pgbin/initdb" -D "$pgdata" -A trust -U postgres -E UTF8 >/dev/null
  $as_pg "$pgbin/pg_ctl" -D "$pgdata" -l "$dir/pg/log" -w \
    -o "-k $dir/pg -c listen_addresses= -c max_connections=100" start >/dev/null
  database="postgres://postgres@localhost/postgres?host=$dir/pg"
fi

# A wide port range so ten seconds of creates do not run out of gateway ports.
cat > "$dir/postern.toml" <<TOML
forward_port_min = 2000
forward_port_max = 65000
[[regions]]
name = "local"
entry_point = "127.0.0.1"
port_min = 2000
port_max = 65000
TOML
db_args=()
if [ "$database" != sqlite ]; then db_args=(--database-url "$database"); fi

# wrk is one address standing for many clients: lift the per-address connection cap.
POSTERN_MAX_CONNECTIONS_PER_ADDRESS=1024 POSTERN_GRANT_RATE_PER_TOKEN=0 POSTERN_GRANT_RATE_PER_ADDRESS=0 POSTERN_LOG=info "$bin" server \
  --data-dir "$dir/data" --listen 127.0.0.1:0 --log-format json \
  --config "$dir/postern.toml" "${db_args[@]}" >"$dir/stdout" 2>"$dir/stderr" &
pid=$!
addr=
for _ in $(seq 100); do
  addr=$(grep -o '"listen":"[^"]*"' "$dir/stderr" | head -1 | cut -d'"' -f4 || true)
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { echo "server did not start:" >&2; cat "$dir/stderr" >&2; exit 1; }
base="http://$addr"
token=$("$bin" admin create-token --data-dir "$dir/data" --config "$dir/postern.toml" \
  "${db_args[@]}" --role operator --name bench)
auth="Authorization: Bearer $token"

router=$(curl -sf -H "$auth" -H 'content-type: application/json' "$base/api/routers" \
  -d '{"name":"bench","tunnel_address":"10.255.0.2","username":"postern","password":"bench-pass"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
# History: forwards created and revoked at once (they show only with ?all=true).
for i in $(seq "$history"); do
  id=$(curl -sf -H "$auth" -H 'content-type: application/json' \
    "$base/api/routers/$router/transient-forwarding" \
    -d '{"expire_after_minutes":120,"dst_port":999,"dst_address":"192.168.88.43","allow_from":"198.51.100.0/24"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  curl -sf -o /dev/null -X DELETE -H "$auth" "$base/api/routers/$router/transient-forwarding/$id"
done
for i in $(seq 100); do
  curl -sf -o /dev/null -H "$auth" -H 'content-type: application/json' \
    "$base/api/routers/$router/transient-forwarding" \
    -d "{\"expire_after_minutes\":120,\"dst_port\":$((1000 + i)),\"dst_address\":\"192.168.88.43\",\"allow_from\":\"198.51.100.0/24\"}"
done
count=$(curl -sf -H "$auth" "$base/api/routers/$router/transient-forwarding" |
  python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
[ "$count" = 100 ] || { echo "seeded $count grants, expected 100" >&2; exit 1; }

cat > "$dir/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $token"
wrk.body = '{"type":"winbox","allow_from":"198.51.100.0/24","expire_after_minutes":60}'
done = function(summary, latency, requests)
  local bad = summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("non-2xx or socket errors: %d\n", bad))
end
LUA
cat > "$dir/get.lua" <<LUA
wrk.headers["Authorization"] = "Bearer $token"
done = function(summary, latency, requests)
  local bad = summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("non-2xx or socket errors: %d\n", bad))
end
LUA

echo "== postern API benchmark: $(nproc) cores, database $( [ "$database" = sqlite ] && echo sqlite || echo postgres ), wrk -t$threads -c$connections -d$duration, $history ended grants in history"
echo "-- GET /api/routers/{id}/transient-forwarding (100 grants; list cache on: one query per request, the list is reused while the router's grants_version stands)"
wrk -t"$threads" -c"$connections" -d"$duration" -s "$dir/get.lua" \
  "$base/api/routers/$router/transient-forwarding" | grep -E 'Requests/sec|Latency|non-2xx|requests in'
echo "-- the same with POSTERN_LIST_CACHE=false (every request also reads and decodes the 100 grants)"
kill "$pid"; wait "$pid" 2>/dev/null || true
POSTERN_LIST_CACHE=false POSTERN_GRANT_RATE_PER_TOKEN=0 POSTERN_GRANT_RATE_PER_ADDRESS=0 POSTERN_LOG=info "$bin" server --data-dir "$dir/data" --listen "$addr" \
  --log-format json --config "$dir/postern.toml" "${db_args[@]}" >"$dir/stdout" 2>"$dir/stderr2" &
pid=$!
for _ in $(seq 100); do curl -sf -o /dev/null "$base/healthz" && break; sleep 0.1; done
wrk -t"$threads" -c"$connections" -d"$duration" -s "$dir/get.lua" \
  "$base/api/routers/$router/transient-forwarding" | grep -E 'Requests/sec|Latency|non-2xx|requests in'
echo "-- POST /api/routers/{id}/transient-access (create a grant)"
wrk -t"$threads" -c"$connections" -d"$duration" -s "$dir/post.lua" \
  "$base/api/routers/$router/transient-access" | grep -E 'Requests/sec|Latency|non-2xx|requests in'
