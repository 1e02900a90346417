#!/usr/bin/env bash
# `postern ssh SITE -- COMMAND`, from the command to its exit, side by side with plain
# OpenSSH (sshpass) to the same router's SSH through the gateway with a grant made
# beforehand. Against `postern demo` (a server, its gateway and three sim routers on
# loopback). Each `postern ssh` run makes the SSH grant for the caller's address, waits
# for the router job (`?wait=true`), reads the credentials, runs ssh with the password
# through the askpass helper, and revokes the grant when ssh exits: all of that is timed.
# The command is `/system identity print` (the sim is a RouterOS stand-in: it has no
# `true`; the timing is the same for any short command).
# Usage: bench/ssh.sh            Environment: ROUNDS (30), POSTERN_BIN (the postern binary;
# default: a release build, made now, or BUILD=debug for target/debug/postern).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
rounds=${ROUNDS:-30}
for tool in ssh sshpass python3; do
  command -v "$tool" >/dev/null || { echo "$tool is missing" >&2; exit 1; }
done
if [ -n "${POSTERN_BIN:-}" ]; then
  bin=$POSTERN_BIN
elif [ "${BUILD:-release}" = debug ]; then
  cargo build -q -p postern-cli
  bin=$CARGO_TARGET_DIR/debug/postern
else
  cargo build --release -q -p postern-cli
  bin=$CARGO_TARGET_DIR/release/postern
fi

dir=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

"$bin" demo --listen 127.0.0.1:0 --json --routers 1 --base-address 127.0.91.1 \
  >"$dir/demo.json" 2>"$dir/demo.log" &
pid=$!
for _ in $(seq 300); do [ -s "$dir/demo.json" ] && break; sleep 0.1; done
read -r url token < <(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["portal_url"].rstrip("/"), d["api_token"])' "$dir/demo.json")
export XDG_CONFIG_HOME=$dir/config POSTERN_SERVER=$url POSTERN_TOKEN=$token

now() { date +%s%N; }
times_postern=()
times_plain=()

# Warm-up (the first run learns the router's host key).
"$bin" ssh sim-1 -- /system identity print >/dev/null 2>&1

for _ in $(seq "$rounds"); do
  t0=$(now)
  "$bin" ssh sim-1 -- /system identity print >/dev/null 2>>"$dir/ssh.err"
  t1=$(now)
  times_postern+=($(( (t1 - t0) / 1000 )))
done

# Plain OpenSSH to the same router through the gateway: one grant made before timing.
router=$(curl -fsS -H "authorization: Bearer $token" "$url/api/routers" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
grant=$(curl -fsS -X POST -H "authorization: Bearer $token" -H 'content-type: application/json' \
  -d '{"type":"ssh","allow_from":"127.0.0.1"}' "$url/api/routers/$router/transient-access?wait=true" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
read -r port user pass < <(curl -fsS -H "authorization: Bearer $token" "$url/api/routers/$router/transient-access/$grant/credentials" \
  | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["port"], d["username"], d["password"])')
plain() {
  SSHPASS=$pass sshpass -e ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o LogLevel=ERROR -o PubkeyAuthentication=no -o PreferredAuthentications=password \
    -p "$port" -l "$user" 127.0.0.1 /system identity print >/dev/null
}
plain
for _ in $(seq "$rounds"); do
  t0=$(now)
  plain
  t1=$(now)
  times_plain+=($(( (t1 - t0) / 1000 )))
done

python3 - "$rounds" "${times_postern[*]}" "${times_plain[*]}" <<'PY'
import sys
rounds = sys.argv[1]
def row(name, text):
    t = sorted(int(x) / 1000 for x in text.split())
    pick = lambda q: t[min(len(t) - 1, int(q * len(t)))]
    print(f"| {name} | {pick(0.5):.0f} ms | {pick(0.9):.0f} ms | {t[-1]:.0f} ms |")
print(f"{rounds} runs each, command to exit:")
print("| | p50 | p90 | max |")
print("|---|---|---|---|")
row("`postern ssh sim-1 -- /system identity print` (grant, wait, ssh, revoke)", sys.argv[2])
row("plain `ssh` (sshpass) to the same router through the gateway, grant made before", sys.argv[3])
PY
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load average $(cut -d' ' -f1-3 /proc/loadavg); binary: $bin"
