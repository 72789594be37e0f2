#!/usr/bin/env bash
# Source ROS 2 Humble and the ovsam_ros workspace, then run the command.
set -e
source /opt/ros/humble/setup.bash
source /ws/install/setup.bash
exec "$@"
