#!/usr/bin/env bash
# The main job on an embedded default: set up .venv if needed (tools/setup.sh), then run
# `ovsam demo`: the OVSAM ROS 2 node, a sample camera publishing the bundled images, a
# prompt source and a listener, in one process on loopback. No camera, no weights needed.
# Arguments go to `ovsam demo` (see `.venv/bin/ovsam demo --help`), e.g. --frames 20, --offline.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${OVSAM_VENV:-$ROOT/.venv}"

bash "$ROOT/tools/setup.sh"

# Demo traffic stays on this machine unless the caller chose a discovery setting
# (ROS_LOCALHOST_ONLY for Humble, which ignores ROS_AUTOMATIC_DISCOVERY_RANGE).
if [[ -z "${ROS_AUTOMATIC_DISCOVERY_RANGE:-}" && -z "${ROS_LOCALHOST_ONLY:-}" ]]; then
  export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_LOCALHOST_ONLY=1
fi
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export ROS_HOME="${ROS_HOME:-$ROOT/outputs/ros_home}"

cd "$ROOT"
exec "$VENV/bin/ovsam" demo "$@"
