"""ROS 2 glue: message conversion, the perception node, test isolation. Thin by design."""
