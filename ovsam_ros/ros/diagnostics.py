"""Per-frame latency per stage, input age and drop counts, as /diagnostics and a log line.

Plain Python (no rclpy at import): the node feeds :class:`NodeStats` from its
callbacks and worker thread, and :func:`diagnostic_array` turns a snapshot into
a ``diagnostic_msgs/DiagnosticArray``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

# queue: image callback -> worker start (hand-over between threads), not part of "total".
STAGES = ("queue", "preprocess", "encode", "decode", "recognition", "publish", "total")
# Counters whose growth since the last message makes an active node WARN (bad input, errors, or
# depth in the wrong unit: 3D outputs 1,000x off). Empty masks do not: a blank frame has no object.
WARN_COUNTERS = ("frames_failed", "frames_rejected", "qos_incompatible", "depth_implausible", "tf_unavailable")
# An age (receive / publish time - header.stamp) further than this from 0 says the stamp is on another
# clock (a bag replayed without use_sim_time, an unsynced host) or hostile: one such stamp would own the
# window's mean for 100 frames, so it is counted in ``stamps_implausible`` and kept out of the windows.
MAX_PLAUSIBLE_AGE_S = 60.0
# A finalized node is alive but will never process a frame again: a supervisor must restart it.
FINALIZED_MESSAGE = "finalized: this node will not process frames again; restart it"


@dataclass
class Window:
    """The last ``size`` samples of one quantity (seconds)."""

    size: int = 100
    values: deque = field(default_factory=deque)

    def add(self, value: float) -> None:
        self.values.append(value)
        while len(self.values) > self.size:
            self.values.popleft()

    def summary(self) -> Optional[dict[str, float]]:
        if not self.values:
            return None
        ordered = sorted(self.values)
        return {
            "mean": sum(ordered) / len(ordered),
            "p50": ordered[len(ordered) // 2],
            "max": ordered[-1],
            "last": self.values[-1],
        }


class StageClock:
    """Times the stages of one frame: ``with clock.stage("encode"): ...``."""

    def __init__(self) -> None:
        self.durations: dict[str, float] = {}
        self._start = time.perf_counter()

    def stage(self, name: str) -> "_Stage":
        return _Stage(self, name)

    def add(self, name: str, seconds: float) -> None:
        self.durations[name] = self.durations.get(name, 0.0) + seconds

    def finish(self) -> dict[str, float]:
        self.durations["total"] = time.perf_counter() - self._start
        return self.durations


class _Stage:
    def __init__(self, clock: StageClock, name: str) -> None:
        self.clock, self.name = clock, name

    def __enter__(self) -> None:
        self._t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.clock.add(self.name, time.perf_counter() - self._t0)


class NodeStats:
    """Counters and latency windows shared by the callbacks and the worker (thread-safe)."""

    def __init__(self, window: int = 100) -> None:
        self._lock = threading.Lock()
        self.window = window
        self.reset()

    def reset(self) -> None:
        with getattr(self, "_lock", threading.Lock()):
            self.frames_received = 0
            self.frames_processed = 0
            self.frames_dropped = 0  # replaced by a newer frame before the worker took them
            self.frames_rejected = 0  # could not be decoded / converted
            self.frames_idle = 0  # nothing to do (prompt mode without prompts)
            self.frames_failed = 0  # inference raised
            self.prompts_rejected = 0
            self.prompts_over_limit = 0  # prompts past max_prompts / max_prompt_points (also in prompts_rejected)
            self.results_discarded = 0  # computed, not published: deactivated meanwhile, or older than one published
            self.qos_incompatible = 0  # publishers whose QoS cannot match a subscription
            self.zero_stamps = 0
            self.stamps_implausible = 0  # ages past MAX_PLAUSIBLE_AGE_S: counted, not averaged
            self.prompts_on_stamped_frame = 0  # stamped prompts run on the buffered frame they name
            self.prompts_on_newest_frame = 0  # stamped prompts whose frame was gone: newest frame instead
            self.depth_skipped = 0  # frames whose 3D part was skipped (bad / missing depth or CameraInfo)
            self.depth_implausible = 0  # frames whose depth is implausible for its encoding (mm sent as 32FC1 ...)
            self.tf_unavailable = 0  # frames whose 3D stayed in the camera frame: no target_frame transform
            self.empty_masks = 0  # prompt results without a pixel: not objects, left out of the outputs
            self.everything_empty = 0  # everything/text frames whose thresholds removed every candidate
            self.last_stamp: Optional[tuple[int, int]] = None
            self.last_error = ""
            self.stages = {name: Window(self.window) for name in STAGES}
            self.input_age = Window(self.window)  # receive time - header.stamp
            self.result_age = Window(self.window)  # publish time - header.stamp
            self.instances = Window(self.window)
            self._processed_times: deque = deque(maxlen=self.window)

    def received(self, age_s: Optional[float]) -> None:
        with self._lock:
            self.frames_received += 1
            if age_s is None:
                self.zero_stamps += 1
            elif abs(age_s) > MAX_PLAUSIBLE_AGE_S:
                self.stamps_implausible += 1
            else:
                self.input_age.add(age_s)

    def dropped(self, count: int = 1) -> None:
        with self._lock:
            self.frames_dropped += count

    def count(self, name: str, error: str = "", n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)
            if error:
                self.last_error = error

    def processed(self, stages: dict[str, float], stamp: tuple[int, int], result_age_s: Optional[float],
                  instances: int) -> None:
        with self._lock:
            self.frames_processed += 1
            self.last_stamp = stamp
            for name, seconds in stages.items():
                if name in self.stages:
                    self.stages[name].add(seconds)
            if result_age_s is not None and abs(result_age_s) <= MAX_PLAUSIBLE_AGE_S:
                self.result_age.add(result_age_s)  # an implausible stamp was counted on receipt
            self.instances.add(float(instances))
            self._processed_times.append(time.monotonic())

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            times = list(self._processed_times)
            rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
            return {
                "frames_received": self.frames_received,
                "frames_processed": self.frames_processed,
                "frames_dropped": self.frames_dropped,
                "frames_rejected": self.frames_rejected,
                "frames_idle": self.frames_idle,
                "frames_failed": self.frames_failed,
                "prompts_rejected": self.prompts_rejected,
                "prompts_over_limit": self.prompts_over_limit,
                "results_discarded": self.results_discarded,
                "qos_incompatible": self.qos_incompatible,
                "zero_stamps": self.zero_stamps,
                "stamps_implausible": self.stamps_implausible,
                "prompts_on_stamped_frame": self.prompts_on_stamped_frame,
                "prompts_on_newest_frame": self.prompts_on_newest_frame,
                "depth_skipped": self.depth_skipped,
                "depth_implausible": self.depth_implausible,
                "tf_unavailable": self.tf_unavailable,
                "empty_masks": self.empty_masks,
                "everything_empty": self.everything_empty,
                "processing_rate_hz": rate,
                "last_stamp": self.last_stamp,
                "last_error": self.last_error,
                "stages": {name: w.summary() for name, w in self.stages.items()},
                "input_age": self.input_age.summary(),
                "result_age": self.result_age.summary(),
                "instances": self.instances.summary(),
            }


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def summary_line(snap: dict[str, Any]) -> str:
    """One human line: counts, rate, mean per-stage latency and input age (ms)."""
    stages = " ".join(
        f"{name} {_ms(s['mean'])}" for name, s in snap["stages"].items() if s is not None
    ) or "no frames yet"
    age = snap["input_age"]
    return (
        f"frames: {snap['frames_received']} received, {snap['frames_processed']} processed, "
        f"{snap['frames_dropped']} dropped (stale), {snap['frames_rejected']} rejected; "
        f"{snap['processing_rate_hz']:.2f} Hz; latency ms (mean): {stages}; "
        f"input age ms: {_ms(age['mean']) if age else '-'}"
    )


def diagnostic_array(snap: dict[str, Any], *, name: str, stamp: Any, state: str,
                     extra: Iterable[tuple[str, str]] = (), previous: Optional[dict[str, Any]] = None,
                     error: str = "", stale: Optional[str] = None) -> Any:
    """A ``DiagnosticArray`` with one status for the node, in any lifecycle state.

    ERROR with ``error`` (why the last configure failed) while that holds, and when finalized (the
    process lives on but will never process a frame: it needs a restart); OK when unconfigured or
    inactive (an operator's choice, or not started yet); when active, WARN
    with ``stale`` (why the input looks dead), or when a :data:`WARN_COUNTERS` counter (frames
    rejected or failed, QoS mismatches, implausible depth, no target_frame transform) grew since ``previous`` (the last
    published snapshot); OK otherwise.
    """
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    status = DiagnosticStatus(name=name, hardware_id="ovsam_ros")
    values = [("state", state)]
    for key in ("frames_received", "frames_processed", "frames_dropped", "frames_rejected", "frames_idle",
                "frames_failed", "prompts_rejected", "prompts_over_limit", "results_discarded", "qos_incompatible",
                "zero_stamps", "stamps_implausible", "prompts_on_stamped_frame", "prompts_on_newest_frame", "depth_skipped",
                "depth_implausible", "tf_unavailable", "empty_masks", "everything_empty"):
        values.append((key, str(snap[key])))
    values.append(("processing_rate_hz", f"{snap['processing_rate_hz']:.3f}"))
    if snap["last_stamp"] is not None:
        values.append(("last_stamp", f"{snap['last_stamp'][0]}.{snap['last_stamp'][1]:09d}"))
    for stage, s in snap["stages"].items():
        if s is not None:
            values += [(f"{stage}_ms_mean", _ms(s["mean"])), (f"{stage}_ms_max", _ms(s["max"])),
                       (f"{stage}_ms_last", _ms(s["last"]))]
    for key in ("input_age", "result_age"):
        if snap[key] is not None:
            values += [(f"{key}_ms_mean", _ms(snap[key]["mean"])), (f"{key}_ms_max", _ms(snap[key]["max"])),
                       (f"{key}_ms_last", _ms(snap[key]["last"]))]
    values += list(extra)
    if snap["last_error"]:
        values.append(("last_error", snap["last_error"]))
    if error:
        values.append(("configure_error", error))
        status.level, status.message = DiagnosticStatus.ERROR, f"{state}: configure failed: {error}"
    elif state == "finalized":
        status.level, status.message = DiagnosticStatus.ERROR, FINALIZED_MESSAGE
    elif state != "active":
        status.level, status.message = DiagnosticStatus.OK, f"{state}"
    elif stale:
        status.level, status.message = DiagnosticStatus.WARN, f"active; {stale}"
    elif any(snap[k] > (previous or {}).get(k, 0) for k in WARN_COUNTERS):
        status.level, status.message = DiagnosticStatus.WARN, f"active; bad input or errors: {snap['last_error']}"
    else:
        status.level, status.message = DiagnosticStatus.OK, "active"
    status.values = [KeyValue(key=k, value=v) for k, v in values]
    array = DiagnosticArray(status=[status])
    array.header.stamp = stamp
    return array


def values_of(array: Any) -> dict[str, str]:
    """``{key: value}`` of the first status in a DiagnosticArray (for tests and the demo)."""
    return {kv.key: kv.value for kv in array.status[0].values} if array.status else {}
