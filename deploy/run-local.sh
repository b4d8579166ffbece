#!/usr/bin/env bash
# make run: a console on embedded defaults (SQLite in ./data/console,
# embedded MQTT broker, HTTP :8080) and one local agent, edge-1, that
# enrolls by itself. A second run reuses ./data. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
CONSOLE_DATA=${CONSOLE_DATA:-./data/console}
AGENT_DATA=${AGENT_DATA:-./data/edge-1}
HTTP_PORT=${HTTP_PORT:-8080}
MQTT_PORT=${MQTT_PORT:-1883}
URL="http://127.0.0.1:${HTTP_PORT}"
mkdir -p "$CONSOLE_DATA" "$AGENT_DATA"

pids=()
stop() {
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped console and agent (data kept in ./data)"
}
trap stop INT TERM EXIT

bin/cloudskin-console serve --data "$CONSOLE_DATA" --http ":${HTTP_PORT}" --mqtt "127.0.0.1:${MQTT_PORT}" &
pids+=($!)
for _ in $(seq 1 100); do
  curl -fsS "$URL/readyz" >/dev/null 2>&1 && break
  kill -0 "${pids[0]}" 2>/dev/null || { echo "console failed to start" >&2; exit 1; }
  sleep 0.1
done

token_args=()
if [ ! -f "$AGENT_DATA/credential.json" ]; then
  token_args=(--token "$(bin/cloudskin-console token create --data "$CONSOLE_DATA" --ttl 10m --description 'make run: edge-1' 2>/dev/null)")
fi
bin/cloudskin-agent run --console "$URL" --name edge-1 --data "$AGENT_DATA" \
  --label site=local --lat 41.5623 --lon 1.6907 --power-class grid --http 127.0.0.1:9180 "${token_args[@]}" &
pids+=($!)

pw="(set by CLOUDSKIN_ADMIN_PASSWORD when the data dir was created)"
[ -f "$CONSOLE_DATA/initial-admin-password" ] && pw=$(cat "$CONSOLE_DATA/initial-admin-password")
cat <<MSG

  CloudSkin console:  $URL
  admin login:        admin / $pw
  try:  TOKEN=\$(curl -s $URL/api/v1/auth/login -H 'content-type: application/json' \\
          -d '{"username":"admin","password":"$pw"}' | sed 's/.*"token":"\([^"]*\)".*/\1/')
        curl -s -H "Authorization: Bearer \$TOKEN" $URL/api/v1/nodes
  agent metrics:      http://127.0.0.1:9180/metrics
  Ctrl-C stops both.

MSG
wait -n "${pids[@]}"
