"""``ovsam-demo-prompts``: publish point/box prompts or a text query to the OVSAM node.

    ovsam-demo-prompts --point 320,240 --box 100,80,400,380 --image-size 640x480 --persistent
    ovsam-demo-prompts --object "p:300,200 n:350,220 b:250,150,420,300"   # one object, several cues
    ovsam-demo-prompts --text "red cup" --persistent
    ovsam-demo-prompts --clear                                             # empty persistent set + empty query

Coordinates are pixels of an image of ``--image-size`` (default 0x0: "whatever
frame comes next"); the node rescales them to its frames when the aspect ratio
matches. Persistent prompts apply to every frame until replaced or cleared;
one-shot prompts to the next frame only. Messages are republished every
``--period`` seconds (0 = once) so a node that starts later still gets them.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Optional, Sequence

from ovsam_ros.prompts import Prompt


def text_query_msg(text: str, *, persistent: bool = False, max_instances: int = 0, min_score: float = 0.0,
                   frame_id: str = "") -> Any:
    from ovsam_ros.msg import TextQuery

    msg = TextQuery(text=text, max_instances=max_instances, min_score=min_score, persistent=persistent)
    msg.header.frame_id = frame_id
    return msg


def make_prompt_node(node_name: str = "demo_prompts", target: str = "ovsam", **node_kwargs: Any):
    """A node with ``send_prompts(...)`` and ``send_text(...)`` publishing on the OVSAM node's
    ``~/prompts`` / ``~/text_query``: ``<target>/prompts`` (relative ``target`` = a node in this
    node's namespace). RELIABLE + TRANSIENT_LOCAL: a node that (re)starts later still gets the last ones."""
    from rclpy.node import Node

    from ovsam_ros.msg import PromptArray, TextQuery
    from ovsam_ros.ros.prompt_input import prompt_array_msg
    from ovsam_ros.ros.qos import COMMAND_QOS

    base = target.rstrip("/")

    class PromptSource(Node):
        def __init__(self) -> None:
            super().__init__(node_name, **node_kwargs)
            self.prompt_pub = self.create_publisher(PromptArray, f"{base}/prompts", COMMAND_QOS)
            self.text_pub = self.create_publisher(TextQuery, f"{base}/text_query", COMMAND_QOS)

        def send_prompts(self, prompts: Sequence[Prompt], image_size: tuple[int, int] = (0, 0), *,
                         persistent: bool = False, frame_id: str = "", stamp: Any = None,
                         sources: Optional[Sequence[Any]] = None) -> Any:
            """``stamp``: the image the prompts were made on (the node runs them on that frame);
            None leaves it zero: "the next frame"."""
            msg = prompt_array_msg(prompts, image_size, persistent=persistent, frame_id=frame_id, stamp=stamp,
                                   sources=sources)
            self.prompt_pub.publish(msg)
            return msg

        def send_text(self, text: str, **kwargs: Any) -> Any:
            msg = text_query_msg(text, **kwargs)
            msg.header.stamp = self.get_clock().now().to_msg()
            self.text_pub.publish(msg)
            return msg

    return PromptSource()


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ovsam_ros.prompt_parsing import parse_box as _box
    from ovsam_ros.prompt_parsing import parse_object
    from ovsam_ros.prompt_parsing import parse_point as _point
    from ovsam_ros.cli_types import image_size

    parser = argparse.ArgumentParser(prog="ovsam-demo-prompts", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--point", dest="prompts", action="append", type=_point, default=[], metavar="X,Y")
    parser.add_argument("--box", dest="prompts", action="append", type=_box, metavar="X0,Y0,X1,Y1")
    parser.add_argument("--object", dest="prompts", action="append", type=parse_object, metavar="SPEC",
                        help="'p:X,Y n:X,Y b:X0,Y0,X1,Y1' = one object from several cues")
    parser.add_argument("--text", default=None, help="publish a text query instead of / besides prompts")
    parser.add_argument("--image-size", type=image_size, default=None, metavar="WxH",
                        help="size of the image the coordinates refer to (default: the next frame's)")
    parser.add_argument("--persistent", action="store_true", help="apply to every frame until cleared")
    parser.add_argument("--clear", action="store_true", help="clear persistent prompts and the text query")
    parser.add_argument("--frame-id", default="", help="camera frame the prompts were made for ('' = any)")
    parser.add_argument("--period", type=float, default=1.0, help="republish every N s (0 = once; default 1)")
    parser.add_argument("--count", type=int, default=5,
                        help="publish this many times (0 = until Ctrl-C; while running, the last messages stay "
                             "latched for a node that restarts)")
    parser.add_argument("--target", default="ovsam",
                        help="the OVSAM node to prompt: its name in this namespace or a full path such as "
                             "/robot1/ovsam (default: ovsam -> ovsam/prompts, ovsam/text_query)")
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args = argv[argv.index("--ros-args"):] if "--ros-args" in argv else []
    args = parser.parse_args(argv[: len(argv) - len(ros_args)])
    if not (args.prompts or args.text or args.clear):
        parser.error("give --point/--box/--object, --text or --clear")

    from ovsam_ros.ros.node_cli import ros_environment_defaults

    ros_environment_defaults()
    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=["ovsam-demo-prompts", *ros_args])
    node = make_prompt_node(target=args.target)
    size = args.image_size or (0, 0)
    sent = 0
    try:
        time.sleep(0.5)  # discovery
        while rclpy.ok():
            if args.clear:
                node.send_prompts([], size, persistent=True, frame_id=args.frame_id)
                node.send_text("")
            if args.prompts:
                node.send_prompts(args.prompts, size, persistent=args.persistent, frame_id=args.frame_id)
            if args.text:
                node.send_text(args.text, persistent=args.persistent, frame_id=args.frame_id)
            sent += 1
            node.get_logger().info(f"sent {len(args.prompts)} prompt(s){' + text ' + repr(args.text) if args.text else ''}"
                                   f"{' (clear)' if args.clear else ''}", throttle_duration_sec=10.0)
            if args.period <= 0 or (args.count and sent >= args.count):
                break
            rclpy.spin_once(node, timeout_sec=args.period)
        time.sleep(0.3)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
