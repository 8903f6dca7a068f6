#!/usr/bin/env bash
# Start a one-node Ray head on 127.0.0.1 for local `ray job submit` runs, and wait until its
# job server answers.
#
#   cluster/start_local.sh                 # GCS port 6390, dashboard (job server) 8275, all CPUs
#   RAY_PORT=6400 DASHBOARD_PORT=8300 NUM_CPUS=2 RAY_TEMP_DIR=/tmp/ray-x cluster/start_local.sh
#
# Then:  export RAY_AUTH_MODE=token
#        ray job submit --address http://127.0.0.1:8275 --working-dir . \
#            --runtime-env cluster/runtime_env.yaml -- \
#            python jobs/train.py --config jobs/configs/distributed-default.yaml
# Stop it with cluster/stop_local.sh (same RAY_TEMP_DIR).
#
# The head runs as `ray start --block` in its own session, its pid in $RAY_TEMP_DIR/head.pid,
# so stop_local.sh ends exactly this head and nothing else (`ray stop` would end every Ray
# process of this user on the machine). Jobs run with the environment of this script: start
# it with the project's virtual environment first on PATH, so a job's `python` is that one.
set -euo pipefail

RAY_PORT="${RAY_PORT:-6390}"
DASHBOARD_PORT="${DASHBOARD_PORT:-8275}"
NUM_CPUS="${NUM_CPUS:-$(nproc)}"
TEMP_DIR="${RAY_TEMP_DIR:-/tmp/ray-lorap}"
WAIT_S="${WAIT_S:-180}"
RAY="${RAY:-ray}"

# Offline-friendly: no usage reporting, no `uv run` runtime-env detection.
export RAY_USAGE_STATS_ENABLED=0
export RAY_ENABLE_UV_RUN_RUNTIME_ENV=0
# Token authentication (Ray's default for a new local cluster; the token is ~/.ray/auth_token,
# made if missing). Clients such as `ray job submit` send it only when they see this too:
# export RAY_AUTH_MODE=token in the shell you submit from.
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"

mkdir -p "$TEMP_DIR"
if [ -f "$TEMP_DIR/head.pid" ] && kill -0 "$(cat "$TEMP_DIR/head.pid")" 2>/dev/null; then
  echo "a head from $TEMP_DIR is already running (pid $(cat "$TEMP_DIR/head.pid"))" >&2
  exit 1
fi

setsid "$RAY" start --head --block \
  --node-ip-address 127.0.0.1 \
  --port "$RAY_PORT" \
  --include-dashboard true \
  --dashboard-host 127.0.0.1 \
  --dashboard-port "$DASHBOARD_PORT" \
  --num-cpus "$NUM_CPUS" \
  --temp-dir "$TEMP_DIR" \
  --disable-usage-stats \
  >"$TEMP_DIR/head.log" 2>&1 </dev/null &
echo $! >"$TEMP_DIR/head.pid"

deadline=$((SECONDS + WAIT_S))
# `ray job list` answers once the job server is up (and carries the auth token, if any).
until "$RAY" job list --address "http://127.0.0.1:$DASHBOARD_PORT" >/dev/null 2>&1; do
  if ! kill -0 "$(cat "$TEMP_DIR/head.pid")" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
    echo "the Ray head did not come up; its log ($TEMP_DIR/head.log):" >&2
    tail -n 40 "$TEMP_DIR/head.log" >&2
    exit 1
  fi
  sleep 2
done
echo "Ray head: 127.0.0.1:$RAY_PORT, job server: http://127.0.0.1:$DASHBOARD_PORT"
