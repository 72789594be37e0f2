#!/usr/bin/env bash
# Source ROS 2 Humble and the ovsam_ros workspace, then run the command.
# dustynv's L4T images build ROS from source into $ROS_ROOT/install (ROS_ROOT=/opt/ros/humble);
# there is no /opt/ros/humble/setup.bash as in the apt layout.
set -e
source "${ROS_ROOT:-/opt/ros/humble}/install/setup.bash"
source /ws/install/setup.bash
exec "$@"
