"""``ovsam-node`` command line: parse first, import rclpy / torch / the node only to run it.

``--help`` and argument errors answer in a fraction of a second instead of waiting seconds for
torch and open_clip to import (test/test_cli_imports.py pins that they are not imported).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence


def ros_environment_defaults() -> None:
    """The ament index in this prefix when nothing set one (a plain venv with the ROS wheels).

    Discovery settings (ROS_AUTOMATIC_DISCOVERY_RANGE, ROS_DOMAIN_ID, ROS_STATIC_PEERS) are the
    user's: the node, the camera and the prompt tools must reach an off-board camera or an rviz
    laptop when the robot's environment says so. Only ``ovsam demo`` and the tests pin LOCALHOST.
    """
    os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)


def ros_args_for(params_files: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    """rclpy arguments: our --params-file options and the user's ROS arguments in one --ros-args block."""
    args = [part for path in params_files for part in ("--params-file", path)] + list(extra)
    return ["--ros-args", *args] if args else []


def params_files_in(ros_args: Sequence[str]) -> list[str]:
    """The ``--params-file X`` values inside the user's ``--ros-args`` block."""
    return [ros_args[i + 1] for i, arg in enumerate(ros_args[:-1]) if arg == "--params-file"]


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ovsam-node",
        description="OVSAM perception node (lifecycle). Extra ROS arguments go after --ros-args "
                    "(remaps: --ros-args -r image:=/camera/image_raw; parameters: -p mode:=everything).")
    parser.add_argument("--params-file", action="append", default=[], metavar="YAML",
                        help="ROS parameters file (config/ovsam.yaml format); repeatable")
    parser.add_argument("--no-autostart", action="store_true",
                        help="stay unconfigured; drive the lifecycle with its services")
    parser.add_argument("--name", default="ovsam", help="node name (default: ovsam)")
    parser.add_argument("--namespace", default="", help="node namespace")
    parser.add_argument("--threads", type=int, default=4, help="executor threads for callbacks (default 4)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_extra: list[str] = []
    if "--ros-args" in argv:  # everything after it is for rclpy (remaps, -p, --log-level)
        cut = argv.index("--ros-args")
        argv, ros_extra = argv[:cut], argv[cut + 1:]
    args = build_arg_parser().parse_args(argv)
    ros_environment_defaults()
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] [%(name)s]: %(message)s")
    from ovsam_ros.ros.node import run  # rclpy, torch, open_clip: seconds

    return run(args, ros_args_for(args.params_file, ros_extra), [*args.params_file, *params_files_in(ros_extra)])


if __name__ == "__main__":
    sys.exit(main())
