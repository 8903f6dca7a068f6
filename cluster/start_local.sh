#!/usr/bin/env bash
# Start a one-node Ray head on 127.0.0.1 for local `ray job submit` runs.
#
#   cluster/start_local.sh                 # GCS port 6390, dashboard (job server) 8275
#   RAY_PORT=6400 DASHBOARD_PORT=8300 NUM_CPUS=2 cluster/start_local.sh
#
# Then:  ray job submit --address http://127.0.0.1:8275 --working-dir . -- \
#            python jobs/train.py --config jobs/configs/distributed-default.yaml
# Stop with cluster/stop_local.sh.
set -euo pipefail

RAY_PORT="${RAY_PORT:-6390}"
DASHBOARD_PORT="${DASHBOARD_PORT:-8275}"
NUM_CPUS="${NUM_CPUS:-$(nproc)}"
TEMP_DIR="${RAY_TEMP_DIR:-/tmp/ray-lorap}"

# Offline-friendly: no usage reporting, no `uv run` runtime-env detection.
export RAY_USAGE_STATS_ENABLED=0
export RAY_ENABLE_UV_RUN_RUNTIME_ENV=0

ray start --head \
  --node-ip-address 127.0.0.1 \
  --port "$RAY_PORT" \
  --dashboard-host 127.0.0.1 \
  --dashboard-port "$DASHBOARD_PORT" \
  --num-cpus "$NUM_CPUS" \
  --temp-dir "$TEMP_DIR" \
  --disable-usage-stats

echo "Ray head: 127.0.0.1:$RAY_PORT, job server: http://127.0.0.1:$DASHBOARD_PORT"
