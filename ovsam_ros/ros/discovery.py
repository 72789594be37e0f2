"""Keeping demo and test ROS traffic on this machine, on every distro.

Two variables say "loopback only": ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` (Iron and later)
and ``ROS_LOCALHOST_ONLY=1`` (Humble, which ignores the former and would otherwise talk to the
robot's network on its domain; later distros still honour it, deprecated). Setting both works
everywhere. The installed node and tools never call this: discovery is their user's.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

#: The environment that keeps DDS discovery on loopback on Humble, Jazzy, Kilted and later.
LOCAL_ONLY = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_LOCALHOST_ONLY": "1"}


def default_to_local(env: MutableMapping[str, str] = os.environ) -> bool:
    """Set :data:`LOCAL_ONLY` unless the caller chose a discovery setting; True when it was set.

    A user who set either variable chose: neither is then touched (one of each would contradict).
    """
    if any(name in env for name in LOCAL_ONLY):
        return False
    env.update(LOCAL_ONLY)
    return True
