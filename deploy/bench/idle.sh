#!/usr/bin/env bash
# Idle footprint of the console and the agent, side by side with peers run
# in the same window: an idle Mosquitto broker next to the console (which
# embeds a broker) and an idle mosquitto_sub holding a QoS 1 session next to
# the agent. Reads RSS (VmRSS, VmHWM) and CPU (utime+stime) from /proc.
#
#   deploy/bench/idle.sh                   # 10 s settle, 60 s window
#   IDLE_SECONDS=300 deploy/bench/idle.sh  # longer window
#
# Knobs: IDLE_SECONDS (default 60), SETTLE_SECONDS (default 10),
# MOSQUITTO (peer broker binary, default /usr/sbin/mosquitto).
# Needs: go, make, curl, ss, mosquitto, mosquitto_sub, mosquitto_pub.
# Everything runs on 127.0.0.1 in a temp dir that is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

IDLE_SECONDS=${IDLE_SECONDS:-60}
SETTLE_SECONDS=${SETTLE_SECONDS:-10}
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
for v in IDLE_SECONDS SETTLE_SECONDS; do
  [[ ${!v} =~ ^[0-9]+$ && ${!v} -gt 0 ]] || { echo "idle.sh: $v must be a positive whole number of seconds, got '${!v}'" >&2; exit 2; }
done
for c in go make curl ss "$MOSQUITTO" mosquitto_sub mosquitto_pub; do
  command -v "$c" >/dev/null || { echo "idle.sh: $c not found" >&2; exit 2; }
done

say() { printf '[idle %s] %s\n' "$(date +%T)" "$*"; }

TMP=$(mktemp -d -t cloudskin-idle.XXXXXX)
declare -A PID=()
cleanup() {
  local rc=$?
  trap - INT TERM EXIT
  for name in "${!PID[@]}"; do kill -TERM "${PID[$name]}" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    local alive=0
    for name in "${!PID[@]}"; do kill -0 "${PID[$name]}" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for name in "${!PID[@]}"; do kill -KILL "${PID[$name]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ $rc != 0 ] && [ $rc != 130 ]; then # 130: interrupted, not failed
    for f in "$TMP"/*.log; do
      [ -s "$f" ] && { echo "--- last lines of $(basename "$f")" >&2; tail -n 15 "$f" >&2; }
    done
  fi
  rm -rf "$TMP"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() { echo "idle.sh: $*" >&2; exit 1; }

# free_port prints a TCP port no socket uses and this run has not taken.
# It picks below the kernel's ephemeral range, so an outgoing connection
# cannot take the port between this check and the bind.
read -r EPHEMERAL_LOW _ </proc/sys/net/ipv4/ip_local_port_range
((EPHEMERAL_LOW > 11000)) || EPHEMERAL_LOW=32768 # odd range: just pick 10000–32767
TAKEN=" "
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((10000 + RANDOM % (EPHEMERAL_LOW - 10000)))
    [[ $TAKEN == *" $p "* ]] && continue
    ss -Htan "sport = :$p" | grep -q . && continue
    TAKEN+="$p "
    echo "$p"
    return
  done
  die "no free TCP port found"
}

# wait_for NAME TRIES CMD... retries CMD every 0.1 s while process NAME lives.
wait_for() {
  local name=$1 tries=$2
  shift 2
  for _ in $(seq 1 "$tries"); do
    "$@" >/dev/null 2>&1 && return 0
    kill -0 "${PID[$name]}" 2>/dev/null || die "$name exited during start-up"
    sleep 0.1
  done
  die "$name not ready after $((tries / 10)) s"
}

say "building (make build)"
make -s build >"$TMP/build.log" 2>&1 || { cat "$TMP/build.log" >&2; die "make build failed"; }

HTTP_PORT=$(free_port); MQTT_PORT=$(free_port); AGENT_PORT=$(free_port); PEER_PORT=$(free_port)
CONSOLE_URL="http://127.0.0.1:$HTTP_PORT"
AGENT_URL="http://127.0.0.1:$AGENT_PORT"
mkdir -p "$TMP/console" "$TMP/agent"

say "starting console (http :$HTTP_PORT, mqtt :$MQTT_PORT)"
CLOUDSKIN_ADMIN_PASSWORD="idle-bench-$RANDOM$RANDOM" \
  bin/cloudskin-console serve --data "$TMP/console" --http "127.0.0.1:$HTTP_PORT" \
  --mqtt "127.0.0.1:$MQTT_PORT" >"$TMP/console.log" 2>&1 &
PID[console]=$!
wait_for console 300 curl -fsS "$CONSOLE_URL/readyz"

say "enrolling agent idle-1 (http :$AGENT_PORT)"
TOKEN=$(bin/cloudskin-console token create --data "$TMP/console" --ttl 10m --description 'idle benchmark' 2>>"$TMP/token.log") \
  || die "token create failed"
bin/cloudskin-agent run --console "$CONSOLE_URL" --name idle-1 --data "$TMP/agent" \
  --token "$TOKEN" --http "127.0.0.1:$AGENT_PORT" >"$TMP/agent.log" 2>&1 &
PID[agent]=$!
agent_online() { curl -fsS "$AGENT_URL/healthz" | grep -q '"mqtt_connected":true'; }
wait_for agent 300 agent_online

say "starting peers: mosquitto :$PEER_PORT and mosquitto_sub (QoS 1, persistent session)"
cat >"$TMP/mosquitto.conf" <<CONF
listener $PEER_PORT 127.0.0.1
allow_anonymous true
persistence false
user root
CONF
"$MOSQUITTO" -c "$TMP/mosquitto.conf" >"$TMP/mosquitto.log" 2>&1 &
PID[mosquitto]=$!
peer_listening() { ss -Htln "sport = :$PEER_PORT" | grep -q .; }
wait_for mosquitto 100 peer_listening
mosquitto_sub -h 127.0.0.1 -p "$PEER_PORT" -t 'x/#' -q 1 -c -i peer >"$TMP/mosquitto_sub.log" 2>&1 &
PID[mosquitto_sub]=$!
sub_online() {
  mosquitto_pub -h 127.0.0.1 -p "$PEER_PORT" -t x/ready -q 1 -m ready &&
    sleep 0.2 && grep -q ready "$TMP/mosquitto_sub.log"
}
wait_for mosquitto_sub 50 sub_online

# Readiness as an operator would check it.
curl -fsS "$CONSOLE_URL/readyz" >/dev/null || die "console /readyz failed"
say "console /readyz: $(curl -fsS "$CONSOLE_URL/readyz")"
say "agent /healthz:  $(curl -fsS "$AGENT_URL/healthz")"
agent_online || die "agent is not connected to the console's broker"

say "settling for ${SETTLE_SECONDS} s"
sleep "$SETTLE_SECONDS"

NAMES=(console agent mosquitto mosquitto_sub)
HZ=$(getconf CLK_TCK)

# ticks PID prints utime+stime in clock ticks (all threads).
ticks() {
  local s
  s=$(<"/proc/$1/stat") || return 1
  s=${s##*) } # the command name may hold spaces and parentheses
  local -a f
  read -r -a f <<<"$s"
  echo $((f[11] + f[12])) # fields 14 and 15 of proc(5)
}
# status_kb PID FIELD prints a /proc/PID/status field in kB.
status_kb() {
  local k v _
  while read -r k v _; do
    [ "$k" = "$2:" ] && { echo "$v"; return; }
  done <"/proc/$1/status"
  return 1
}

declare -A T0=() RSS_SUM=() ANON_SUM=() RSS_NOW=() TPREV=() CPU1_MAX=()
for n in "${NAMES[@]}"; do
  T0[$n]=$(ticks "${PID[$n]}") || die "$n exited before sampling"
  TPREV[$n]=${T0[$n]}
  RSS_SUM[$n]=0
  ANON_SUM[$n]=0
  CPU1_MAX[$n]=0
done
samples=0
say "sampling every 1 s for ${IDLE_SECONDS} s"
W0=$EPOCHREALTIME
next=${W0/./}
for i in $(seq 1 "$IDLE_SECONDS"); do
  # Sleep to the next whole second of the window so drift does not add up.
  next=$((next + 1000000))
  now=${EPOCHREALTIME/./}
  ((next > now)) && sleep "$(printf '%d.%06d' $(((next - now) / 1000000)) $(((next - now) % 1000000)))"
  for n in "${NAMES[@]}"; do
    p=${PID[$n]}
    RSS_NOW[$n]=$(status_kb "$p" VmRSS) || die "$n (pid $p) exited during the window"
    RSS_SUM[$n]=$((RSS_SUM[$n] + RSS_NOW[$n]))
    anon=$(status_kb "$p" RssAnon) || die "$n (pid $p) exited during the window"
    ANON_SUM[$n]=$((ANON_SUM[$n] + anon))
    t=$(ticks "$p") || die "$n (pid $p) exited during the window"
    d=$((t - TPREV[$n]))
    ((d > CPU1_MAX[$n])) && CPU1_MAX[$n]=$d
    TPREV[$n]=$t
  done
  samples=$((samples + 1))
  if ((i % 10 == 0 || i == IDLE_SECONDS)); then
    line=""
    for n in "${NAMES[@]}"; do line+=" $n=$((RSS_NOW[$n] / 1024))MiB"; done
    say "$i/${IDLE_SECONDS} s  rss:$line"
  fi
done
W1=$EPOCHREALTIME

# One row per process: name mean_rss_kb hwm_kb ticks peak_1s_ticks mean_anon_kb.
rows=""
for n in "${NAMES[@]}"; do
  hwm=$(status_kb "${PID[$n]}" VmHWM)
  rows+="$n $((RSS_SUM[$n] / samples)) $hwm $((TPREV[$n] - T0[$n])) ${CPU1_MAX[$n]} $((ANON_SUM[$n] / samples))"$'\n'
done

cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
echo
echo "machine: nproc=$(nproc), cpu=${cpu_model:-unknown}, kernel=$(uname -r), $(go version | cut -d' ' -f3-), $("$MOSQUITTO" -h 2>/dev/null | head -n 1)"
echo "run:     $(date -u +%FT%TZ), settle ${SETTLE_SECONDS} s, window ${IDLE_SECONDS} s, ${samples} samples, CLK_TCK ${HZ}"
echo
awk -v wall="$(awk -v a="$W0" -v b="$W1" 'BEGIN { print b - a }')" -v hz="$HZ" '
  NF == 6 { rss[$1] = $2; hwm[$1] = $3; t[$1] = $4; p1[$1] = $5; anon[$1] = $6 }
  function mib(kb) { return sprintf("%.1f", kb / 1024) }
  function pct(ticks) { return sprintf("%.3f", 100 * ticks / hz / wall) }
  # CPU time is counted in whole ticks: a peer that used none gives a bound.
  function ratio(a, b) {
    if (a == 0 && b == 0) return "n/a (both < 1 tick)"
    if (b == 0) return sprintf("≥ %d× (peer < 1 tick)", a)
    return sprintf("%.1f×", a / b)
  }
  END {
    print "| process | mean RSS (MiB) | of which anonymous (MiB) | peak RSS, VmHWM (MiB) | CPU (% of one core) | CPU ticks in window | busiest 1 s (% of one core) |"
    print "|---|---:|---:|---:|---:|---:|---:|"
    n = split("console mosquitto agent mosquitto_sub", order, " ")
    for (i = 1; i <= n; i++) {
      k = order[i]
      printf "| %s | %s | %s | %s | %s | %d | %d |\n", k, mib(rss[k]), mib(anon[k]), mib(hwm[k]), pct(t[k]), t[k], 100 * p1[k] / hz
    }
    print ""
    print "| ratio | RSS | anonymous RSS | CPU |"
    print "|---|---:|---:|---:|"
    printf "| console / mosquitto | %.1f× | %.1f× | %s |\n", rss["console"] / rss["mosquitto"], anon["console"] / anon["mosquitto"], ratio(t["console"], t["mosquitto"])
    printf "| agent / mosquitto_sub | %.1f× | %.1f× | %s |\n", rss["agent"] / rss["mosquitto_sub"], anon["agent"] / anon["mosquitto_sub"], ratio(t["agent"], t["mosquitto_sub"])
    printf "\nwall time of the window: %.2f s; 1 tick = %.3f %% of one core over it\n", wall, 100 / hz / wall
  }' <<<"$rows"
