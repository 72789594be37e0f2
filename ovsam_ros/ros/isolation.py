"""Run multi-process ROS 2 programs in a private, loopback-only network.

Tests and benchmarks start real DDS participants in several processes. Their
discovery traffic must never leave this machine, and two test runs must never
see each other. :class:`IsolatedRosGroup` therefore

* creates one private network namespace (``unshare -n``) holding only ``lo``,
  brought up by a small holder process that lives as long as the group;
* starts every process of the group inside that namespace (``nsenter``), with
  ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` and ``ROS_LOCALHOST_ONLY=1``, its own ``ROS_DOMAIN_ID`` and a
  temporary ``ROS_HOME``;
* kills every process it started (whole process groups) on exit.

Needs ``unshare``/``nsenter`` (util-linux) and root or unprivileged user
namespaces; :func:`isolation_available` says whether this machine has them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ovsam_ros.ros.discovery import LOCAL_ONLY

# Brings `lo` up with an ioctl, so the holder needs no iproute2.
_HOLDER_CODE = """
import fcntl, socket, struct, sys, time
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack('16sh', fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack('16sh', b'lo', 0)))[1]
fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack('16sh', b'lo', flags | IFF_UP))
print('ready', flush=True)
while True:
    time.sleep(3600)
"""


def ros_environment(domain_id: int, ros_home: str | os.PathLike[str], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a ROS 2 process confined to loopback and one domain."""
    env = dict(os.environ if base is None else base)
    prefix = sys.prefix
    ament = env.get("AMENT_PREFIX_PATH", "")
    if prefix not in ament.split(os.pathsep):
        env["AMENT_PREFIX_PATH"] = os.pathsep.join(p for p in (prefix, ament) if p)
    env.update(LOCAL_ONLY)  # both variables: Humble knows only ROS_LOCALHOST_ONLY
    env.update(
        ROS_DOMAIN_ID=str(domain_id),
        ROS_HOME=str(ros_home),
        ROS_LOG_DIR=str(Path(ros_home) / "log"),
        RMW_IMPLEMENTATION=env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp"),
        PYTHONUNBUFFERED="1",
    )
    env.pop("ROS_STATIC_PEERS", None)  # peers elsewhere would defeat the isolation
    return env


def _namespace_commands() -> list[tuple[list[str], list[str]]]:
    """(holder prefix, enter prefix) pairs to try: root netns first, then a user netns."""
    return [
        (["unshare", "--net"], ["nsenter", "--net=/proc/{pid}/ns/net", "--"]),
        (
            ["unshare", "--user", "--map-root-user", "--net"],
            ["nsenter", "--preserve-credentials", "--user=/proc/{pid}/ns/user", "--net=/proc/{pid}/ns/net", "--"],
        ),
    ]


def isolation_available() -> tuple[bool, str]:
    """Whether a private network namespace can be made here, and why not."""
    if not (shutil.which("unshare") and shutil.which("nsenter")):
        return False, "unshare/nsenter (util-linux) not found"
    for holder, _ in _namespace_commands():
        probe = subprocess.run([*holder, "true"], capture_output=True, text=True)
        if probe.returncode == 0:
            return True, ""
    return False, f"cannot create a network namespace: {probe.stderr.strip()}"


class IsolatedRosGroup:
    """A private loopback network plus the ROS processes started in it.

    Use as a context manager::

        with IsolatedRosGroup(domain_id=42) as group:
            sub = group.start([sys.executable, "listener.py"])
            pub = group.start([sys.executable, "talker.py"])
            sub.wait(timeout=30)
    """

    def __init__(self, domain_id: int, workdir: str | os.PathLike[str] | None = None) -> None:
        if not 0 <= domain_id <= 101:
            raise ValueError(f"ROS_DOMAIN_ID must be in 0..101, got {domain_id}")
        self.domain_id = domain_id
        self._own_tmp = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="ovsam_ros_") if workdir is None else workdir)
        self.ros_home = self.workdir / "ros_home"
        self.env = ros_environment(domain_id, self.ros_home)
        self._holder: subprocess.Popen[str] | None = None
        self._enter: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> "IsolatedRosGroup":
        self.ros_home.mkdir(parents=True, exist_ok=True)
        errors = []
        for holder_prefix, enter_prefix in _namespace_commands():
            holder = subprocess.Popen(
                [*holder_prefix, sys.executable, "-c", _HOLDER_CODE],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
            )
            line = holder.stdout.readline().strip() if holder.stdout else ""
            if line == "ready":
                self._holder = holder
                self._enter = [part.replace("{pid}", str(holder.pid)) for part in enter_prefix]
                return self
            holder.kill()
            _, err = holder.communicate(timeout=10)
            errors.append(err.strip())
        self._cleanup_dir()
        raise RuntimeError("could not create a private network namespace: " + " | ".join(errors))

    def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdout: int | None = subprocess.PIPE,
        stderr: int | None = subprocess.STDOUT,
        cwd: str | os.PathLike[str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside the namespace with the group's ROS environment (+ ``env``)."""
        if self._holder is None:
            raise RuntimeError("IsolatedRosGroup.start() called outside its `with` block")
        proc = subprocess.Popen(
            [*self._enter, *argv],
            env={**self.env, **(env or {})},
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            start_new_session=True,  # own process group: stop() reaches its children too
        )
        self.processes.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
        """SIGINT (rclpy shuts down cleanly), then SIGKILL after ``timeout``; returns the exit code."""
        if proc.poll() is None:
            _signal_group(proc, signal.SIGINT)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=timeout)
        return proc.returncode

    def __exit__(self, *exc: object) -> None:
        for proc in self.processes:
            self.stop(proc, timeout=5.0)
            # Kill stragglers a process may have left in its group.
            _signal_group(proc, signal.SIGKILL)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        if self._holder is not None:
            _signal_group(self._holder, signal.SIGKILL)
            self._holder.wait(timeout=10)
            for stream in (self._holder.stdout, self._holder.stderr):
                if stream is not None:
                    stream.close()
            self._holder = None
        self._cleanup_dir()

    def _cleanup_dir(self) -> None:
        if self._own_tmp:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_for_line(proc: subprocess.Popen[bytes], needle: str, timeout: float) -> list[str]:
    """Read ``proc``'s output until a line contains ``needle``; returns the lines read.

    Raises TimeoutError (with everything read so far) if it does not appear in time.
    """
    import selectors

    lines: list[str] = []
    deadline = time.monotonic() + timeout
    selector = selectors.DefaultSelector()
    assert proc.stdout is not None
    selector.register(proc.stdout, selectors.EVENT_READ)
    buffer = b""
    try:
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, min(0.5, deadline - time.monotonic()))):
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                line = raw.decode(errors="replace")
                lines.append(line)
                if needle in line:
                    return lines
    finally:
        selector.close()
    raise TimeoutError(f"{needle!r} not seen within {timeout:.0f} s; output so far:\n" + "\n".join(lines))
