"""What a robot team types, against the node started by the real ``ros2 launch``: the ``ros2`` CLI.

One launched node (model ``tiny``, installed as colcon installs it) serves every check in this
module: ``ros2 interface show`` of each message and service, ``ros2 lifecycle get/set``,
``ros2 param get/set`` (a bad value refused with the node's reason), ``ros2 service call`` of
``~/set_vocabulary`` and ``~/segment``, and ``ros2 topic echo --once`` of ``~/masks``. Needs the
ROS 2 tools (a ROS 2 install, or ../shared/ros2-tools installed by tools/setup.sh).
"""

from __future__ import annotations

import importlib.util
import re
import sys
import zlib
from pathlib import Path

import pytest

from ovsam_ros.ros.isolation import IsolatedRosGroup, isolation_available, wait_for_line

ROOT = Path(__file__).resolve().parents[2]
PROGRAMS = Path(__file__).parent / "programs"
MISSING = [m for m in ("launch_ros", "ros2cli", "ros2topic", "ros2param", "ros2lifecycle", "ros2service",
                       "ros2interface") if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.skipif(bool(MISSING), reason=f"needs the ros2 command line ({', '.join(MISSING)} not importable): "
                                              "a ROS 2 install, or tools/setup.sh with ../shared/ros2-tools"),
    pytest.mark.ros, pytest.mark.e2e, pytest.mark.timeout(900),
]


# Without a daemon a fresh `ros2` process knows no node until discovery ran: let it listen first.
DISCOVERY = ("--spin-time", "5")


class Cli:
    """Runs ``ros2 ...`` in the launched node's private network, as the installed workspace sees it."""

    def __init__(self, group: IsolatedRosGroup, python: Path, env: dict[str, str], cwd: Path) -> None:
        from install_prefix import ros2_command

        self.group, self.base, self.env, self.cwd = group, ros2_command(python), env, cwd

    def __call__(self, *args: str, timeout: float = 120) -> tuple[int, str]:
        """(exit code, stdout + stderr) of ``ros2 ARGS``."""
        proc = self.group.start([*self.base, *args], env=self.env, cwd=str(self.cwd))
        try:
            out, _ = proc.communicate(timeout=timeout)
        finally:
            self.group.stop(proc)
        return proc.returncode, out.decode(errors="replace")


@pytest.fixture(scope="module")
def launched(prefix_python, tmp_path_factory):
    ok, why = isolation_available()
    if not ok:
        pytest.skip(f"multi-process ROS tests need a private network namespace: {why}")
    python, overlay = prefix_python
    tmp = tmp_path_factory.mktemp("ros2_cli")
    with IsolatedRosGroup(domain_id=1 + zlib.crc32(b"test_ros2_cli") % 100, workdir=tmp / "ros") as group:
        launch = group.start([*Cli(group, python, overlay, tmp).base, "launch", "ovsam_ros", "ovsam.launch.py",
                              "model:=tiny"], env=overlay, cwd=str(tmp))
        wait_for_line(launch, "active: mode 'prompt'", timeout=300)
        yield Cli(group, python, overlay, tmp), launch


def test_interface_show_prints_every_message_and_service(launched):
    cli, _ = launched
    for path in sorted((ROOT / "msg").glob("*.msg")) + sorted((ROOT / "srv").glob("*.srv")):
        code, out = cli("interface", "show", f"ovsam_ros/{path.parent.name}/{path.stem}")
        assert code == 0, out
        for line in path.read_text().splitlines():  # every field line of the file, as written
            field = line.split("#")[0].strip()
            if field and field != "---":
                assert field in out, (path.name, field)


def state_of(output: str) -> str:
    """The state line of `ros2 lifecycle get` (rcl may print warnings too, e.g. Jazzy's about
    ROS_LOCALHOST_ONLY)."""
    found = re.search(r"^(unconfigured|inactive|active|finalized) \[\d+\]$", output, re.M)
    return found.group(1) if found else output


def test_lifecycle_get_and_set(launched):
    cli, _ = launched
    assert state_of(cli("lifecycle", "get", "/ovsam", "--no-daemon", *DISCOVERY)[1]) == "active"
    code, out = cli("lifecycle", "set", "/ovsam", "deactivate", "--no-daemon", *DISCOVERY)
    assert code == 0 and "Transitioning successful" in out, out
    assert state_of(cli("lifecycle", "get", "/ovsam", "--no-daemon", *DISCOVERY)[1]) == "inactive"  # launch leaves it
    code, out = cli("lifecycle", "set", "/ovsam", "activate", "--no-daemon", *DISCOVERY)
    assert code == 0 and "Transitioning successful" in out, out
    assert state_of(cli("lifecycle", "get", "/ovsam", "--no-daemon", *DISCOVERY)[1]) == "active"


def test_param_get_set_and_a_refused_value(launched):
    cli, _ = launched
    assert "String value is: tiny" in cli("param", "get", "/ovsam", "model", "--no-daemon", *DISCOVERY)[1]
    code, out = cli("param", "set", "/ovsam", "mode", "sideways", "--no-daemon", *DISCOVERY)
    assert "Setting parameter failed" in out and "sideways" in out and "everything" in out, out  # names the choices
    assert "String value is: prompt" in cli("param", "get", "/ovsam", "mode", "--no-daemon", *DISCOVERY)[1]
    code, out = cli("param", "set", "/ovsam", "max_instances", "5", "--no-daemon", *DISCOVERY)
    assert "Set parameter successful" in out, out
    assert "Integer value is: 5" in cli("param", "get", "/ovsam", "max_instances", "--no-daemon", *DISCOVERY)[1]


def test_service_call_set_vocabulary(launched):
    cli, _ = launched
    code, out = cli("service", "call", "/ovsam/set_vocabulary", "ovsam_ros/srv/SetVocabulary",
                    "{vocabulary: 'cup, door handle'}")
    assert code == 0 and "success=True" in out and "num_classes=2" in out, out
    code, out = cli("service", "call", "/ovsam/set_vocabulary", "ovsam_ros/srv/SetVocabulary", "{vocabulary: lvsi}")
    assert "success=False" in out and "lvis" in out, out  # the typo is refused with the closest name


def test_service_call_segment(launched):
    cli, _ = launched
    data = [200 if 4 <= y < 12 and 4 <= x < 12 else 0 for y in range(16) for x in range(16)]
    request = ("{image: {height: 16, width: 16, encoding: mono8, step: 16, data: " + str(data) + "}, "
               "mode: prompt, prompts: [{has_box: true, box: {x_min: 4.0, y_min: 4.0, x_max: 12.0, y_max: 12.0}}]}")
    code, out = cli("service", "call", "/ovsam/segment", "ovsam_ros/srv/Segment", request)
    assert code == 0 and "success=True" in out, out[-3000:]
    assert re.search(r"image_height=16, image_width=16, mode=.prompt.", out) and "instance_id=0" in out, out[-3000:]


def test_topic_echo_once_decodes_masks(launched):
    cli, _ = launched
    # frames + a persistent box prompt, until echo got one result however late it subscribed
    source = cli.group.start([sys.executable, str(PROGRAMS / "frame_source.py"), "/camera/image_raw", "/ovsam/prompts"],
                             env=cli.env, cwd=str(cli.cwd))
    try:
        wait_for_line(source, "publishing", timeout=120)
        code, out = cli("topic", "echo", "--once", "--no-daemon", "/ovsam/masks", "ovsam_ros/msg/LabeledMaskArray",
                        timeout=300)
    finally:
        cli.group.stop(source)
    assert code == 0, out[-3000:]
    assert "mode: prompt" in out and "image_width: 160" in out and "frame_id: camera" in out, out[-3000:]
    assert re.search(r"^instances:\s*$", out, re.M) and "predicted_iou:" in out, out[-3000:]
