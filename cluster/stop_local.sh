#!/usr/bin/env bash
# Stop the Ray head that cluster/start_local.sh started (same RAY_TEMP_DIR), and only it.
#
# SIGTERM to `ray start --block` shuts its node down (GCS, raylet, dashboard, workers); what
# is left of its process group after WAIT_S seconds is killed.
set -euo pipefail

TEMP_DIR="${RAY_TEMP_DIR:-/tmp/ray-lorap}"
WAIT_S="${WAIT_S:-30}"
PID_FILE="$TEMP_DIR/head.pid"

if [ ! -f "$PID_FILE" ]; then
  echo "no $PID_FILE: no head started from $TEMP_DIR" >&2
  exit 0
fi
pid=$(cat "$PID_FILE")
# setsid made the head a session and process-group leader: its group id is its pid.
kill -TERM -- "-$pid" 2>/dev/null || true
deadline=$((SECONDS + WAIT_S))
while pgrep -g "$pid" >/dev/null 2>&1 && [ "$SECONDS" -lt "$deadline" ]; do
  sleep 1
done
kill -KILL -- "-$pid" 2>/dev/null || true
rm -f "$PID_FILE"
echo "stopped the Ray head of $TEMP_DIR (process group $pid)"
