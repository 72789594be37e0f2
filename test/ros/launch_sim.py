"""Evaluate launch/ovsam.launch.py without ROS 2's `launch` (not installable here): a test helper.

``launch`` / ``launch_ros`` are replaced by small recording stand-ins for exactly the
classes the launch file imports, so the file's own logic runs: its arguments and
defaults, the overrides it builds, the remaps, the node's command line, and its
lifecycle event handlers. :func:`node_command` then builds the command line the way
``launch_ros.actions.Node`` does (``<prefix>/lib/<pkg>/<exe> ARGS --ros-args -r __node:=NAME
-r __ns:=NS --params-file ... -r from:=to``), and :func:`lifecycle_requests` replays the
handlers against a transition sequence, as launch_ros matches them (start_state and
goal_state of each ``OnStateTransition``; ``None`` matches any state).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml


class _Recorded:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs


class LaunchConfiguration(_Recorded):
    def perform(self, context: "Context") -> str:
        return context.arguments[self.args[0]]


class PathJoinSubstitution(_Recorded):
    def perform(self, context: "Context") -> str:
        return str(Path(*[perform(part, context) for part in self.args[0]]))


class FindPackageShare(_Recorded):
    def perform(self, context: "Context") -> str:
        return str(context.share_dirs[self.args[0]])


class IfCondition(_Recorded):
    def evaluate(self, context: "Context") -> bool:
        return perform(self.args[0], context).strip().lower() in ("true", "1")


def perform(value: Any, context: "Context") -> Any:
    """Resolve a substitution (or list of them) to text, as launch does."""
    if isinstance(value, (list, tuple)):
        return "".join(str(perform(v, context)) for v in value)
    return value.perform(context) if hasattr(value, "perform") else value


def matches_action(action: Any) -> Any:
    return ("matches", action)


@dataclass
class Context:
    arguments: dict[str, str]
    share_dirs: dict[str, Path]


def _stub_modules() -> dict[str, types.ModuleType]:
    def module(name: str, **attrs: Any) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        return mod

    def recorded(name: str) -> type:
        return type(name, (_Recorded,), {})

    return {
        "launch": module("launch", LaunchDescription=recorded("LaunchDescription")),
        "launch.actions": module("launch.actions", **{n: recorded(n) for n in (
            "DeclareLaunchArgument", "EmitEvent", "OpaqueFunction", "RegisterEventHandler", "LogInfo",
            "GroupAction")}),
        "launch.conditions": module("launch.conditions", IfCondition=IfCondition,
                                    UnlessCondition=recorded("UnlessCondition")),
        "launch.events": module("launch.events", matches_action=matches_action),
        "launch.substitutions": module("launch.substitutions", LaunchConfiguration=LaunchConfiguration,
                                       PathJoinSubstitution=PathJoinSubstitution),
        "launch_ros": module("launch_ros"),
        "launch_ros.actions": module("launch_ros.actions", LifecycleNode=recorded("LifecycleNode"),
                                     Node=recorded("Node")),
        "launch_ros.event_handlers": module("launch_ros.event_handlers",
                                            OnStateTransition=recorded("OnStateTransition")),
        "launch_ros.events": module("launch_ros.events"),
        "launch_ros.events.lifecycle": module("launch_ros.events.lifecycle", ChangeState=recorded("ChangeState")),
        "launch_ros.substitutions": module("launch_ros.substitutions", FindPackageShare=FindPackageShare),
    }


@contextmanager
def _stubbed() -> Iterator[None]:
    stubs = _stub_modules()
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


@dataclass
class Evaluated:
    """What the launch file asks launch to do, with every substitution resolved."""

    arguments: dict[str, str]  # launch argument -> value (defaults + given)
    descriptions: dict[str, str]
    package: str
    executable: str
    name: str
    namespace: str
    node_arguments: list[str]
    parameters: list[Any]  # file paths (str) and dicts, in order
    remappings: list[tuple[str, str]]
    handlers: list[dict[str, Any]] = field(default_factory=list)  # {start_state, goal_state, transitions}
    initial_transitions: list[int] = field(default_factory=list)  # emitted at launch


def evaluate(launch_file: Path, share_dir: Path, **given: str) -> Evaluated:
    """Run ``generate_launch_description()`` and its OpaqueFunction with launch arguments ``given``."""
    with _stubbed():
        spec = importlib.util.spec_from_file_location("ovsam_launch_under_test", launch_file)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        description = mod.generate_launch_description()
        entities = description.args[0]
        declared = [e for e in entities if type(e).__name__ == "DeclareLaunchArgument"]
        unknown = set(given) - {d.args[0] for d in declared}
        if unknown:
            raise ValueError(f"launch file does not declare {sorted(unknown)}")
        context = Context(arguments={}, share_dirs={"ovsam_ros": share_dir})
        descriptions = {}
        for d in declared:
            name = d.args[0]
            descriptions[name] = d.kwargs.get("description", "")
            context.arguments[name] = given[name] if name in given else str(perform(d.kwargs["default_value"], context))
        produced = []
        for e in entities:
            if type(e).__name__ == "OpaqueFunction":
                produced += e.kwargs["function"](context)
    node = next(e for e in produced if type(e).__name__ in ("LifecycleNode", "Node"))
    kw = node.kwargs
    out = Evaluated(
        arguments=dict(context.arguments), descriptions=descriptions, package=kw["package"],
        executable=kw["executable"], name=kw["name"], namespace=str(perform(kw.get("namespace", ""), context)),
        node_arguments=[str(perform(a, context)) for a in kw.get("arguments", [])],
        parameters=[p if isinstance(p, dict) else str(perform(p, context)) for p in kw.get("parameters", [])],
        remappings=[(str(perform(a, context)), str(perform(b, context))) for a, b in kw.get("remappings", [])],
    )
    for e in produced:
        condition = e.kwargs.get("condition")
        if condition is not None and not condition.evaluate(context):
            continue
        kind = type(e).__name__
        if kind == "EmitEvent":
            out.initial_transitions.append(e.kwargs["event"].kwargs["transition_id"])
        elif kind == "RegisterEventHandler":
            handler = e.args[0] if e.args else e.kwargs["event_handler"]
            hk = handler.kwargs
            out.handlers.append({
                "start_state": hk.get("start_state"), "goal_state": hk.get("goal_state"),
                "transitions": [x.kwargs["event"].kwargs["transition_id"] for x in hk.get("entities", [])
                                if type(x).__name__ == "EmitEvent"],
            })
    return out


def node_command(evaluated: Evaluated, prefix: Path, workdir: Path) -> list[str]:
    """The command line launch_ros builds for the node (dict parameters become a temporary YAML)."""
    argv = [str(prefix / "lib" / evaluated.package / evaluated.executable), *evaluated.node_arguments, "--ros-args",
            "-r", f"__node:={evaluated.name}"]
    if evaluated.namespace:
        argv += ["-r", f"__ns:={evaluated.namespace}"]
    for i, params in enumerate(evaluated.parameters):
        if isinstance(params, dict):
            if not params:
                continue
            path = workdir / f"launch_params_{i}.yaml"
            path.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
            params = str(path)
        argv += ["--params-file", params]
    for src, dst in evaluated.remappings:
        argv += ["-r", f"{src}:={dst}"]
    return argv


# lifecycle_msgs/Transition ids and the states they pass through (REP 2002 / lifecycle_msgs)
TRANSITIONS = {
    1: ("configure", "unconfigured", "configuring", "inactive"),
    2: ("cleanup", "inactive", "cleaningup", "unconfigured"),
    3: ("activate", "inactive", "activating", "active"),
    4: ("deactivate", "active", "deactivating", "inactive"),
}


def lifecycle_requests(evaluated: Evaluated, operator: list[int], max_steps: int = 20) -> tuple[list[str], str]:
    """Replay the launch file's handlers: the launch file's initial transitions, then ``operator``'s.

    Returns (every transition label requested, in order, including the handler-triggered ones;
    the final state). A transition requested from the wrong state is skipped, as the node rejects it.
    """
    state = "unconfigured"
    done: list[str] = []
    queue = list(evaluated.initial_transitions)
    pending_operator = list(operator)
    steps = 0
    while (queue or pending_operator) and steps < max_steps:
        steps += 1
        transition = queue.pop(0) if queue else pending_operator.pop(0)
        label, start, intermediate, goal = TRANSITIONS[transition]
        if state != start:
            continue
        done.append(label)
        state = goal
        for event_start, event_goal in ((start, intermediate), (intermediate, goal)):  # two transition events
            for handler in evaluated.handlers:
                if handler["start_state"] in (None, event_start) and handler["goal_state"] in (None, event_goal):
                    queue += handler["transitions"]
    return done, state
