"""The ROS test harness really isolates and really cleans up."""

import os
import sys
from pathlib import Path

import pytest

from ovsam_ros.ros.isolation import IsolatedRosGroup, isolation_available, ros_environment, wait_for_line

PROGRAMS = Path(__file__).parent / "programs"


def test_ros_environment_is_confined():
    env = ros_environment(17, "/tmp/x", base={"ROS_STATIC_PEERS": "10.0.0.1"})
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST" and env["ROS_LOCALHOST_ONLY"] == "1"
    assert env["ROS_DOMAIN_ID"] == "17"
    assert env["ROS_HOME"] == "/tmp/x"
    assert "ROS_STATIC_PEERS" not in env
    assert sys.prefix in env["AMENT_PREFIX_PATH"].split(os.pathsep)


def test_domain_id_is_validated():
    with pytest.raises(ValueError, match="ROS_DOMAIN_ID"):
        IsolatedRosGroup(domain_id=250)


@pytest.mark.ros
@pytest.mark.e2e
def test_two_groups_cannot_see_each_other_and_processes_are_reaped(tmp_path):
    ok, why = isolation_available()
    if not ok:
        pytest.skip(why)
    with IsolatedRosGroup(domain_id=33, workdir=tmp_path / "a") as a, IsolatedRosGroup(domain_id=33, workdir=tmp_path / "b") as b:
        # The network namespace has only a loopback device.
        ifaces = a.start([sys.executable, "-c", "import socket; print(sorted(n for _, n in socket.if_nameindex()))"])
        assert ifaces.communicate(timeout=30)[0].decode().strip() == "['lo']"

        listener = a.start([sys.executable, str(PROGRAMS / "labeled_mask_listener.py"), str(tmp_path / "got.bin")])
        wait_for_line(listener, "listening", timeout=30)
        talker = b.start([sys.executable, str(PROGRAMS / "labeled_mask_talker.py"), str(tmp_path / "sent.bin")])
        wait_for_line(talker, "publishing", timeout=30)
        # Same domain, different namespaces: nothing may arrive.
        with pytest.raises(TimeoutError):
            wait_for_line(listener, "received", timeout=5)
        pids = [p.pid for p in a.processes + b.processes]
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
