#!/usr/bin/env bash
# Run the ovsam_ros test suite: sets up .venv if needed (tools/setup.sh), then pytest.
# Arguments go to pytest, e.g. `tools/test.sh -m "not e2e"` for the fast unit tests only,
# `tools/test.sh test/model -k decoder` for one area.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${OVSAM_VENV:-$ROOT/.venv}"

bash "$ROOT/tools/setup.sh"

# ROS traffic from tests stays on this machine: multi-process tests also run in a
# private network namespace (ovsam_ros.ros.isolation); in-process ones use these.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_LOCALHOST_ONLY=1   # the second for Humble
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( 1 + $$ % 100 ))}"
export ROS_HOME="${ROS_HOME:-$(mktemp -d -t ovsam_ros_home.XXXXXX)}"
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

cd "$ROOT"
exec "$VENV/bin/python" -m pytest "$@"
