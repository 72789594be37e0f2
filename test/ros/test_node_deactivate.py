"""Lifecycle transitions while a frame is being processed (issue #24 item 2).

A real node with its worker thread, a real subscriber on ``~/masks`` in the same context, and a
gate in the frame's path (the first call waits until the test opens it) so a frame is provably
in flight when ``deactivate`` is called: in inference (``predict``) or in building its outputs
(where tracking 1,000 instances spent seconds in the issue). Pinned: deactivate returns without
waiting for either, but never while a ``publish()`` is under way; one worker thread at most; a
result finished after deactivate is dropped (counted), never published later; results on
``~/masks`` never go back in time.
"""

from __future__ import annotations

import threading
import time

import pytest
from ros_node_helpers import make_image, test_image

rclpy = pytest.importorskip("rclpy")

from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402

from ovsam_ros.prompts import Prompt  # noqa: E402
from ovsam_ros.ros.prompt_input import prompt_array_msg  # noqa: E402

HANG_GUARD = 30.0  # s: only to end a broken run; a working node needs milliseconds
GATE = 120.0  # s a gated call waits at most: longer than any guard, so a blocked transition shows
PROMPT = 10.0  # s: a transition that has not returned by then waited for the frame in flight


class MaskListener:
    """Records the header stamps (sec) of ~/masks in arrival order; spins in its own thread."""

    def __init__(self, context, topic: str) -> None:
        from rclpy.executors import SingleThreadedExecutor

        from ovsam_ros.msg import LabeledMaskArray
        from ovsam_ros.ros.qos import OUTPUT_QOS

        self.node = rclpy.create_node("mask_listener_" + topic.strip("/").replace("/", "_"), context=context)
        self.stamps: list[int] = []
        self.node.create_subscription(LabeledMaskArray, topic, lambda m: self.stamps.append(m.header.stamp.sec),
                                      OUTPUT_QOS)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def wait_for(self, count: int, timeout: float = HANG_GUARD) -> list[int]:
        deadline = time.monotonic() + timeout
        while len(self.stamps) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.stamps)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()


def gate_first_call(owner, name: str, monkeypatch) -> tuple[threading.Event, threading.Event]:
    """The first ``owner.name(...)`` call signals ``entered`` and waits for ``release``; later calls run freely."""
    entered, release = threading.Event(), threading.Event()
    real = getattr(owner, name)
    calls = []

    def gated(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            entered.set()
            release.wait(GATE)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, gated)
    return entered, release


def call_in_thread(fn):
    """(thread, results): fn() runs in a thread; its return value lands in results."""
    results = []
    thread = threading.Thread(target=lambda: results.append(fn()), daemon=True)
    thread.start()
    return thread, results


def workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ovsam-worker" and t.is_alive()]


@pytest.fixture
def listener(ros_context):
    made = []

    def make(topic):
        made.append(MaskListener(ros_context, topic))
        return made[-1]

    yield make
    for one in made:
        one.close()


@pytest.mark.parametrize("stage", ["inference", "outputs"])
def test_deactivate_during_a_long_frame_is_prompt_and_its_result_is_never_published(make_node, listener, monkeypatch,
                                                                                    stage):
    import ovsam_ros.ros.outputs as outputs

    node = make_node(start_worker=True, name="ovsam_deactivate")
    masks = listener("/ovsam_deactivate/masks")
    node._on_prompts(prompt_array_msg([Prompt(box=[20.0, 15.0, 80.0, 70.0])], persistent=True))
    owner, name = (node.predictor, "predict") if stage == "inference" else (outputs, "labeled_mask_array")
    entered, release = gate_first_call(owner, name, monkeypatch)
    try:
        node._receive(make_image(test_image(), stamp=(100, 0)), False)
        assert entered.wait(HANG_GUARD), "the worker never started frame 100"
        # Before: deactivate joined the worker for up to 60 s, then returned SUCCESS with it still running.
        t0 = time.monotonic()
        thread, result = call_in_thread(node.trigger_deactivate)
        thread.join(PROMPT)
        deactivate_s = time.monotonic() - t0
        assert not thread.is_alive(), f"deactivate still blocked after {deactivate_s:.1f} s (frame in flight)"
        assert result == [TransitionCallbackReturn.SUCCESS] and node.state_label == "inactive"
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        # Before: activate started a second worker next to the one still inside frame 100.
        assert len(workers()) == 1, [t.name for t in workers()]
        node._receive(make_image(test_image(), stamp=(101, 0)), False)
    finally:
        release.set()
    assert masks.wait_for(1) == [101], masks.stamps  # frame 100 finished after deactivate: dropped
    node._receive(make_image(test_image(), stamp=(102, 0)), False)
    assert masks.wait_for(2) == [101, 102]
    time.sleep(0.3)  # nothing else arrives (frame 100 never comes late)
    assert masks.stamps == [101, 102]
    snap = node.stats.snapshot()
    assert snap["results_discarded"] == 1 and "deactivated" in snap["last_error"]
    assert snap["frames_processed"] == 2  # what was published, since the last activate
    assert len(workers()) == 1


def test_deactivate_waits_for_a_publish_under_way_and_nothing_follows_it(make_node, listener, monkeypatch):
    """The other half of 'prompt and safe': deactivate returns only once no publish() is under way."""
    node = make_node(start_worker=True, name="ovsam_deactivate_publish")
    masks = listener("/ovsam_deactivate_publish/masks")
    node._on_prompts(prompt_array_msg([Prompt(box=[20.0, 15.0, 80.0, 70.0])], persistent=True))
    # Inside frame 200's ~/masks publish() (its instance-ID image already went out).
    entered, release = gate_first_call(node.publishers_by_name["masks"], "publish", monkeypatch)
    try:
        node._receive(make_image(test_image(), stamp=(200, 0)), False)
        assert entered.wait(HANG_GUARD)
        thread, result = call_in_thread(node.trigger_deactivate)
        thread.join(0.5)
        assert thread.is_alive(), "deactivate returned while frame 200 was being published"
    finally:
        release.set()
    thread.join(HANG_GUARD)
    assert result == [TransitionCallbackReturn.SUCCESS]
    # Frame 200 was already being published: it went out before deactivate returned, nothing after.
    node._receive(make_image(test_image(), stamp=(201, 0)), False)  # inactive: ignored
    time.sleep(0.3)
    assert masks.wait_for(1) == [200]
    time.sleep(0.2)
    assert masks.stamps == [200]


def test_a_stamped_prompt_for_an_older_frame_never_sends_masks_back_in_time(make_node):
    """Frames 0..3 are published (persistent prompt); then a prompt stamped for frame 1 arrives.
    Before: its result went out stamped 1, after 3. Now it runs on the newest frame, counted."""
    node = make_node()
    node._on_prompts(prompt_array_msg([Prompt(box=[20.0, 15.0, 80.0, 70.0])], persistent=True))
    from builtin_interfaces.msg import Time

    published = []
    for sec in range(4):
        node._receive(make_image(test_image(seed=sec), stamp=(300 + sec, 0)), False)
        published.append(node.process_pending().masks.header.stamp.sec)
    node._on_prompts(prompt_array_msg([Prompt(points=[[40.0, 30.0]])], stamp=Time(sec=301),
                                      frame_id="camera_optical_frame"))
    out = node.process_pending()
    published.append(out.masks.header.stamp.sec)
    assert published == [300, 301, 302, 303, 303]
    assert [m.prompt_index for m in out.masks.instances] == [0]  # the stamped prompt, on the newest frame
    snap = node.stats.snapshot()
    assert snap["prompts_on_newest_frame"] == 1 and "already published" in snap["last_error"]


def test_only_one_worker_over_many_transitions(make_node):
    node = make_node(start_worker=True, name="ovsam_transitions")
    for _ in range(5):
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert len(workers()) <= 1
    node.stop_worker()
    deadline = time.monotonic() + HANG_GUARD
    while workers() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert workers() == []


def test_a_result_for_a_frame_older_than_one_published_is_dropped(make_node):
    """The last line of defence (a second caller of process_frame, a tool): the frame's arrival order
    decides, whatever its job; counted, not published."""
    node = make_node()
    node._on_prompts(prompt_array_msg([Prompt(box=[20.0, 15.0, 80.0, 70.0])], persistent=True))
    for sec in (400, 401):
        node._receive(make_image(test_image(seed=sec), stamp=(sec, 0)), False)
        assert node.process_pending().masks.header.stamp.sec == sec
    older = node.pipeline.frames.entries()[0].item
    assert older.msg.header.stamp.sec == 400
    assert node.process_frame(older) is None
    snap = node.stats.snapshot()
    assert snap["results_discarded"] == 1 and "already published" in snap["last_error"]
    assert snap["frames_processed"] == 2
