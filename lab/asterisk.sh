#!/bin/sh
# Start / stop the lab Asterisk with the config of ./etc (paths substituted).
#   ASTERISK_PREFIX  install prefix of the built Asterisk (required; see README.md)
#   LIVE_RUN_DIR     run folder (default: ${TMPDIR:-/tmp}/telefum-live); Asterisk's etc,
#                    var/{lib,log,run,spool} go to $LIVE_RUN_DIR/asterisk
# usage: asterisk.sh start|stop|status|cli 'core show channels'
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
: "${ASTERISK_PREFIX:?set ASTERISK_PREFIX to the Asterisk install prefix}"
RUN=${LIVE_RUN_DIR:-${TMPDIR:-/tmp}/telefum-live}/asterisk
ETC_TEMPLATE=${ASTERISK_ETC_TEMPLATE:-$HERE/etc}
AST="$ASTERISK_PREFIX/sbin/asterisk"
CONF="$RUN/etc/asterisk.conf"

ami_up() {
  python3 - <<'PY'
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", 5038), timeout=1)
    sys.exit(0 if s.recv(64).startswith(b"Asterisk Call Manager") else 1)
except OSError:
    sys.exit(1)
PY
}

case "${1:-}" in
start)
  if [ -f "$RUN/asterisk.pid" ] && kill -0 "$(cat "$RUN/asterisk.pid")" 2>/dev/null; then
    echo "asterisk already running (pid $(cat "$RUN/asterisk.pid"))"; exit 0
  fi
  mkdir -p "$RUN/etc" "$RUN/var/lib" "$RUN/var/log" "$RUN/var/log/cdr-csv" "$RUN/var/run" "$RUN/var/spool"
  cp "$ETC_TEMPLATE"/*.conf "$RUN/etc/"
  # only asterisk.conf has placeholders (RUN_DIR, PREFIX)
  sed -e "s#RUN_DIR#$RUN#g" -e "s#PREFIX#$ASTERISK_PREFIX#g" "$ETC_TEMPLATE/asterisk.conf" > "$CONF"
  # -f: foreground (asterisk.conf also says nofork); -n: no colour; we keep the pid ourselves
  nohup "$AST" -C "$CONF" -f -n > "$RUN/console.log" 2>&1 < /dev/null &
  echo $! > "$RUN/asterisk.pid"
  i=0
  until ami_up; do
    i=$((i + 1)); [ $i -gt 60 ] && { echo "AMI did not come up; see $RUN/console.log"; exit 1; }
    sleep 0.5
  done
  sleep 1   # FullyBooted
  echo "asterisk running (pid $(cat "$RUN/asterisk.pid")), AMI 127.0.0.1:5038, SIP 127.0.0.1:5060"
  ;;
stop)
  [ -f "$RUN/asterisk.pid" ] || { echo "not started by this script"; exit 0; }
  PID=$(cat "$RUN/asterisk.pid")
  "$AST" -C "$CONF" -rx "core stop now" > /dev/null 2>&1 || true
  i=0
  while kill -0 "$PID" 2>/dev/null; do
    i=$((i + 1)); [ $i -gt 20 ] && { kill "$PID" 2>/dev/null || true; }
    [ $i -gt 30 ] && { kill -9 "$PID" 2>/dev/null || true; }
    sleep 0.5
  done
  rm -f "$RUN/asterisk.pid"
  echo "asterisk stopped"
  ;;
status)
  if [ -f "$RUN/asterisk.pid" ] && kill -0 "$(cat "$RUN/asterisk.pid")" 2>/dev/null; then
    echo "running (pid $(cat "$RUN/asterisk.pid"))"; "$AST" -C "$CONF" -rx "core show version"
  else echo "not running"; exit 1; fi
  ;;
cli)
  shift; exec "$AST" -C "$CONF" -rx "$*"
  ;;
*)
  echo "usage: $0 start|stop|status|cli COMMAND"; exit 2 ;;
esac
