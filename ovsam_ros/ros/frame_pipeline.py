"""The node's frame pipeline: received frames in, outputs published in arrival order.

What lives here (the node, :mod:`ovsam_ros.ros.node`, is the lifecycle shell around it):

* **what is asked**: one-shot / persistent prompts and text queries, stamped prompt sets
  waiting for their frame (:class:`PromptBoard`);
* **the worker**: ONE thread for the node's lifetime at most. ``start`` (activate) reuses a
  worker still finishing a frame from before ``pause`` instead of starting a second one;
* **job selection** per frame (first match wins: one-shot prompts, one-shot text query,
  persistent prompts, persistent query, parameter ``mode``), **inference**, **tracking**
  hand-off, optional **3D**, and **publishing**.

Publishing rules (issue #24 item 2), enforced under one lock that ``pause`` also takes:

* nothing is published while inactive, and a frame still in flight when ``pause`` runs is
  dropped, counted in ``results_discarded``: ``pause`` bumps an epoch, a result is published
  only with the epoch its frame started in. ``pause`` waits only for ``publish()`` calls under
  way (the messages are built before the lock is taken), never for inference or tracking:
  once it returns, nothing more is published;
* results never go back in time: a result is published only if its frame arrived no earlier
  than the last published one (``Frame.seq``); a stamped prompt whose frame is older than a
  result already published runs on the newest frame of its camera instead, counted like one
  whose frame left the buffer;
* tracking runs only for frames still publishable when their inference ends; tracker and mask
  feedback state have their own lock (``cleanup`` resets them).

What a frame's outputs hold (issues #23, #24):

* an instance whose mask has no pixel (a box on an all-black frame, a prompt on nothing) is not
  an object: left out of every output, tracking and mask feedback, counted in ``empty_masks``;
* masks travel in ``mask_encoding``; the ID image (``publish_instance_ids``) as a PNG on
  ``~/instance_ids/compressed`` or raw on ``~/instance_ids`` (``instance_ids_format``);
* with depth: ``~/detections_3d`` and ``~/markers`` (RViz: marker id = track id, DELETE when a
  track ends or ``publish_markers`` is turned off, one DELETEALL on each activation).

Output order within a frame: instance ids, overlay, points, detections, 3D detections, markers,
then ``~/masks`` (a consumer that got the masks finds the rest already sent).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ovsam_ros.prompts import Prompt, check_prompt
from ovsam_ros.results import split_empty
from ovsam_ros.robot.depth3d import (DepthError, DepthRangeCheck, Intrinsics, backproject, check_pairing,
                                     depth_to_metres, instance_geometry, transform_points)
from ovsam_ros.robot.frame_buffer import MATCHED, PENDING, StampedBuffer, header_stamp_ns
from ovsam_ros.robot.tracking import CroppedMask, InstanceTracker, Observation
from ovsam_ros.ros import outputs
from ovsam_ros.ros.diagnostics import StageClock
from ovsam_ros.ros.frames import (Frame, LatestFrameSlot, decode_frame, frame_bytes, message_bytes, stamp_seconds,
                                  stamp_tuple)
from ovsam_ros.ros.image_conversion import ImageConversionError, image_to_numpy
from ovsam_ros.ros.parameters import NodeSettings
from ovsam_ros.ros.prompt_input import PromptSet, fit_prompts

STAMPED_QUEUE = 32  # stamped prompt sets waiting for their frame; more and the oldest is dropped, counted
DEPTH_WAIT = 0.1  # s the worker waits for a depth image stamped like its frame that is still on its way
ENCODED_FRAMES = 2  # frames whose image encoding is kept, so a late prompt for them skips the encoder
DEPTH_FRAMES = 10  # depth images kept for pairing by stamp
MIB = 1 << 20


@dataclass
class TextRequest:
    text: str
    max_instances: int = 0  # 0 = parameter max_instances
    min_score: float = 0.0  # 0 = parameter text_min_score

    def problem(self) -> Optional[str]:
        """Why this query cannot be used (a NaN or out-of-range threshold), or None. Nothing is
        clamped: NaN or a negative score would keep every match, 5 would keep none, silently."""
        if not math.isfinite(self.min_score) or not 0.0 <= self.min_score <= 1.0:
            return f"text query {self.text[:80]!r}: min_score must be in 0..1 (0 = the node's text_min_score), " \
                   f"got {self.min_score!r}"
        if self.max_instances < 0:
            return f"text query {self.text[:80]!r}: max_instances must be >= 0 (0 = the node's max_instances), " \
                   f"got {self.max_instances}"
        return None


@dataclass
class Job:
    """What to do with one frame."""

    mode: str  # prompt | everything | text
    prompts: list[Prompt] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)  # prompt_index of each prompt in its PromptArray
    text: Optional[TextRequest] = None
    rejected: list[str] = field(default_factory=list)
    prompt_set: Optional[PromptSet] = None  # where the prompts came from (detector sources)
    persistent: bool = False  # persistent prompts: track ids keyed by prompt, mask feedback


@dataclass
class FrameOutput:
    """What one processed frame produced (returned by ``process_frame`` for tests/tools)."""

    mode: str
    masks: Any  # LabeledMaskArray
    instance_ids: Any = None
    overlay: Any = None
    stages: dict[str, float] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)
    points: Any = None  # PointCloud2 (publish_points)
    detections: Any = None  # vision_msgs/Detection2DArray (where vision_msgs is installed)
    detections_3d: Any = None  # vision_msgs/Detection3DArray (vision_msgs, frames with 3D)
    markers: Any = None  # visualization_msgs/MarkerArray (publish_markers; 3D shown or markers to delete)
    ids_publisher: str = "instance_ids"  # instance_ids (raw Image) or instance_ids_png (CompressedImage)


class PromptBoard:
    """Prompts and text queries as the callbacks leave them, taken by the frames (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.oneshot: Optional[PromptSet] = None
        self.persistent: Optional[PromptSet] = None
        self.oneshot_query: Optional[TextRequest] = None
        self.persistent_query: Optional[TextRequest] = None
        self.stamped: deque[tuple[PromptSet, float]] = deque()  # (set, monotonic time it arrived)
        self.generation = 0  # bumps when persistent prompts are replaced (new track keys)

    def clear(self) -> int:
        """Forget everything; how many prompt sets / queries were dropped."""
        with self.lock:
            cleared = sum(x is not None for x in (self.oneshot, self.persistent, self.oneshot_query,
                                                  self.persistent_query)) + len(self.stamped)
            self.oneshot = self.persistent = None
            self.oneshot_query = self.persistent_query = None
            self.stamped.clear()
            self.generation += 1
            return cleared


class FramePipeline:
    """Frames -> jobs -> inference -> tracking -> published outputs; see the module docstring.

    ``host`` is the node: it provides ``settings``, ``stats``, ``predictor``, ``predictor_lock``,
    ``vocab_version``, ``publishers_by_name`` (output -> lifecycle publisher), ``image_topic``,
    ``range_warnings`` (``warn(source, message)`` for mis-scaled frames), ``get_logger()``,
    ``get_clock()``, ``warn_once_per(key, message, ...)`` and ``process_frame(frame, prompt_set)``;
    the worker calls the host's ``process_frame`` so tools and tests can wrap it.
    """

    def __init__(self, host: Any) -> None:
        self.host = host
        s: NodeSettings = host.settings
        self.board = PromptBoard()
        self.slot = LatestFrameSlot()
        self.frames: StampedBuffer[Frame] = StampedBuffer(s.frame_buffer_size, s.frame_buffer_max_age,
                                                          s.frame_buffer_max_mb * MIB, size_of=frame_bytes)
        # Depth images get the same byte budget as the frames (a second one): ten 4K 32FC1 images
        # are 330 MB, and anything on the domain can publish bigger ones.
        self.depths: StampedBuffer[Any] = StampedBuffer(DEPTH_FRAMES, s.frame_buffer_max_age,
                                                        s.frame_buffer_max_mb * MIB, size_of=message_bytes)
        self.depth_seen = False
        self.camera_info: Any = None
        self.tracker = InstanceTracker(s.tracker_config())
        self.markers = outputs.InstanceMarkers()  # marker ids RViz shows (DELETE when gone); _track_lock
        self.depth_range = self._depth_range_check()
        self._feedback: dict[int, np.ndarray] = {}  # prompt_index -> low-res logits (prompt_mask_feedback)
        self._feedback_key: tuple = ()
        self._encoded: deque[Frame] = deque()  # frames holding an encoding (newest last; predictor lock)
        self._tf_buffer: Any = None
        self._tf_listener: Any = None
        self._stamped_fallback = False  # serve_stamped -> process_frame: the pending frame may run its own job
        # Publishing gate (module docstring): epoch + arrival order, checked under _output_lock.
        self._output_lock = threading.Lock()
        self._track_lock = threading.Lock()  # tracker + mask feedback: the frame being published, or cleanup
        self._epoch = 0
        self._accepting = False
        self._last_seq = 0
        # The worker: at most one thread; _worker_lock makes "is there one?" and "I am leaving" atomic.
        self._worker_lock = threading.Lock()
        self._worker: Optional[threading.Thread] = None
        self._shutdown = threading.Event()
        self._resumed = threading.Event()

    # ------------------------------------------------------------------ lifecycle
    def start(self, worker: bool) -> None:
        """Accept frames and publish (activate); with ``worker``, make sure one worker thread runs."""
        self.slot.clear()
        self.slot.reopen()
        with self._output_lock:
            self._accepting = True
        self._resumed.set()
        if not worker:
            return
        with self._worker_lock:
            self._shutdown.clear()
            # A worker still finishing a frame from before pause() is reused, never doubled.
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._worker_loop, name="ovsam-worker", daemon=True)
                self._worker.start()

    def pause(self) -> None:
        """Stop publishing now (deactivate). Waits for a publish under way, not for inference: a
        frame in flight is dropped when it finishes. Frames and stamped prompts of before are dropped."""
        with self._output_lock:
            self._accepting = False
            self._epoch += 1
        self._resumed.clear()
        self.slot.clear()
        self.slot.wake()
        with self.board.lock:
            self.board.stamped.clear()
        self.frames.clear()
        self.depths.clear()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the worker (process exit, node shutdown); joins it for up to ``timeout`` s. A frame
        still in flight after that is never published (the epoch moved on)."""
        self.pause()
        with self._worker_lock:
            self._shutdown.set()
            worker = self._worker
        self.slot.close()
        self._resumed.set()  # a paused worker wakes up to see the shutdown
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout)

    def reset_markers(self, stamp: Any) -> None:
        """One DELETEALL on ~/markers (activation): markers of an earlier activation show tracks
        that are gone. Call with the publishers enabled."""
        from std_msgs.msg import Header

        with self._track_lock:
            msg = self.markers.clear(Header(stamp=stamp))
        pub = self.host.publishers_by_name.get("markers")
        if pub is not None:
            pub.publish(msg)

    def _depth_range_check(self) -> DepthRangeCheck:
        return DepthRangeCheck(warn=lambda message: self.host.warn_once_per("depth_range", message))

    @property
    def worker_alive(self) -> bool:
        with self._worker_lock:
            return self._worker is not None and self._worker.is_alive()

    def release(self) -> None:
        """Forget prompts, frames, tracks and encodings (cleanup; the predictor lock is held by the caller)."""
        self.board.clear()
        self.frames.clear()
        self.depths.clear()
        self.depth_seen, self.camera_info = False, None
        with self._track_lock:
            self.tracker.reset()
            self._feedback = {}
            self.markers = outputs.InstanceMarkers()
        with self._output_lock:
            self._last_seq = 0
        self.depth_range = self._depth_range_check()
        for frame in self._encoded:
            frame.encoded = None
        self._encoded.clear()
        self._tf_buffer = self._tf_listener = None

    # ------------------------------------------------------------------ inputs
    def receive(self, frame: Frame) -> None:
        """A camera frame (image callback thread): buffered by stamp, and the newest for the worker."""
        s = self.host.settings
        limits = (s.frame_buffer_size, s.frame_buffer_max_age, s.frame_buffer_max_mb * MIB)
        if (self.frames.capacity, self.frames.max_age, self.frames.max_bytes) != limits:
            self.frames.configure(*limits)
            self.depths.configure(DEPTH_FRAMES, s.frame_buffer_max_age, s.frame_buffer_max_mb * MIB)
        self.frames.push(header_stamp_ns(frame.msg.header), frame.msg.header.frame_id, frame, frame.received)
        if self.slot.put(frame):
            self.host.stats.dropped()

    def receive_depth(self, msg: Any) -> None:
        self.depth_seen = True
        self.depths.push(header_stamp_ns(msg.header), msg.header.frame_id, msg, time.monotonic())

    def expire(self, now: float) -> None:
        """Drop buffered frames and depth images older than frame_buffer_max_age (the node's timer)."""
        self.frames.expire(now)
        self.depths.expire(now)

    def accept_oneshot(self, prompt_set: PromptSet) -> None:
        """One-shot prompts: stamped ones wait for their frame, unstamped ones take the next frame."""
        board = self.board
        with board.lock:
            if not prompt_set.stamp:
                board.oneshot = prompt_set
                return
            if len(board.stamped) >= STAMPED_QUEUE:
                board.stamped.popleft()
                self.host.stats.count("prompts_rejected", "stamped prompts waiting for their frame: queue full, "
                                      "oldest dropped")
            board.stamped.append((prompt_set, time.monotonic()))
        self.slot.wake()

    def set_persistent(self, prompt_set: Optional[PromptSet]) -> None:
        with self.board.lock:
            self.board.persistent = prompt_set
            self.board.generation += 1

    def set_query(self, request: Optional[TextRequest], persistent: bool) -> None:
        """A text query; None clears both."""
        with self.board.lock:
            if request is None:
                self.board.persistent_query = self.board.oneshot_query = None
            elif persistent:
                self.board.persistent_query = request
            else:
                self.board.oneshot_query = request

    # ------------------------------------------------------------------ worker
    def _worker_loop(self) -> None:
        next_allowed = 0.0
        while True:
            with self._worker_lock:  # leaving and start()'s "is there a worker?" cannot interleave
                if self._shutdown.is_set():
                    if self._worker is threading.current_thread():
                        self._worker = None
                    return
            if not self._accepting:
                self._resumed.wait(0.5)
                continue
            rate = self.host.settings.max_rate_hz
            if rate > 0:
                # Sleep BEFORE taking: frames arriving meanwhile replace each other.
                delay = next_allowed - time.monotonic()
                if delay > 0 and self._shutdown.wait(delay):
                    continue
            frame = self.slot.take(timeout=0.5)
            if self._shutdown.is_set() or not self._accepting:
                continue
            try:
                frame, served = self.serve_stamped(frame)
                if frame is not None:
                    self.host.process_frame(frame)
                if rate > 0 and (served or frame is not None):
                    next_allowed = time.monotonic() + 1.0 / rate
            except Exception as error:  # never let one frame kill the worker
                reason = _shorten(f"{type(error).__name__}: {error}")
                self.host.stats.count("frames_failed", reason)
                self.host.get_logger().error(f"frame failed: {reason}", throttle_duration_sec=5.0)

    def process_pending(self) -> Optional[FrameOutput]:
        """Serve due stamped prompts and the pending frame now, in this thread; the last output."""
        frame, served = self.serve_stamped(self.slot.take(timeout=0))
        out = self.host.process_frame(frame) if frame is not None else None
        return out if out is not None else (served[-1] if served else None)

    def serve_stamped(self, frame: Optional[Frame]) -> tuple[Optional[Frame], list[FrameOutput]]:
        """Run every stamped prompt set whose frame is known: on that frame if still buffered and not
        older than a published result, else on the newest frame of its camera (``frame``, the pending
        one, if it is that camera's), counted. Sets whose stamp is newer than every buffered frame
        wait (up to frame_buffer_max_age). Returns ``frame`` unless a prompt set used it, and the outputs."""
        with self.board.lock:
            requests = list(self.board.stamped)
            self.board.stamped.clear()
        if not requests:
            return frame, []
        s, stats = self.host.settings, self.host.stats
        tolerance = int(round(s.stamp_tolerance * 1e9))
        waiting, served = [], []
        for prompt_set, requested in requests:
            found = self.frames.find(prompt_set.stamp, prompt_set.frame_id, tolerance, time.monotonic(), requested)
            if found.status == PENDING:
                waiting.append((prompt_set, requested))
                continue
            if found.status == MATCHED and found.entry.item.seq >= self._last_seq:
                target = found.entry.item
                stats.count("prompts_on_stamped_frame")
            else:
                if found.status == MATCHED:
                    reason = ("the frame of stamped prompts is older than a result already published (outputs "
                              "never go back in time)")
                else:
                    reason = f"the frame of stamped prompts is not available ({found.status}: {found.detail})"
                target = frame if frame is not None and _same_camera(prompt_set.frame_id, frame) else None
                if target is None:
                    newest = self.frames.newest(prompt_set.frame_id)
                    target = newest.item if newest is not None else None
                if target is None:
                    stats.count("prompts_rejected", reason + "; no frame of that camera to run them on")
                    self.host.warn_once_per("stamped", reason + "; dropped: no frame of that camera to run them on")
                    continue
                stats.count("prompts_on_newest_frame", reason)
                self.host.warn_once_per("stamped", reason + "; ran on the newest frame")
            on_pending = target is frame
            if on_pending:
                frame = None  # the pending frame serves these prompts instead of its default job
            # ... unless none of them applies to it: then it runs its default job (one frame only)
            self._stamped_fallback = on_pending
            try:
                out = self.host.process_frame(target, prompt_set=prompt_set)
            finally:
                self._stamped_fallback = False
            if out is not None:
                served.append(out)
        if waiting:
            with self.board.lock:
                self.board.stamped.extendleft(reversed(waiting))
        return frame, served

    # ------------------------------------------------------------------ one frame
    def process_frame(self, frame: Frame, prompt_set: Optional[PromptSet] = None) -> Optional[FrameOutput]:
        """Decode, infer, publish one frame; None if it was unusable, there was nothing to do, or its
        result was dropped (inactive meanwhile, or older than a published one).

        ``prompt_set``: run these one-shot prompts (a stamped set matched to this frame) instead
        of the frame's default job."""
        host = self.host
        s, stats = host.settings, host.stats
        epoch = self._epoch
        if not self._accepting:
            return None
        clock = StageClock()
        # Since the image callback (thread hand-over; longer for a buffered frame served by stamped prompts).
        clock.add("queue", max(0.0, time.monotonic() - frame.received))
        header = frame.msg.header
        with clock.stage("preprocess"):
            try:
                rgb = decode_frame(frame.msg, frame.compressed, input_bits=s.input_bits, float_max=s.float_max,
                                   source=host.image_topic or "camera image", warn=host.range_warnings)
            except ImageConversionError as error:
                reason = f"image rejected: {_shorten(str(error))}"
                stats.count("frames_rejected", reason)
                host.warn_once_per("image", reason)
                return None
        image_hw = (int(rgb.shape[0]), int(rgb.shape[1]))
        job = self._next_job(image_hw, header.frame_id, s, prompt_set, fallback=self._stamped_fallback)
        if job is None:
            stats.count("frames_idle")
            return None
        results: list = []
        with host.predictor_lock:
            predictor = host.predictor
            if predictor is None:
                return None
            _apply_threads(s.num_threads)
            predictor.top_k = s.top_k
            if job.mode != "prompt" or job.prompts:  # all prompts rejected: nothing to encode
                with clock.stage("encode"):
                    if frame.encoded is not None and frame.encoded[0] is predictor:
                        predictor.restore_image_state(frame.encoded[1])  # a late prompt: encoded already
                    else:
                        predictor.set_image(rgb)
                        self._keep_encoding(frame, predictor)
                results = self.run_job(predictor, job, s, clock)
            vocab = predictor.vocabulary
        with clock.stage("publish"):
            if self._discard(epoch, frame):  # deactivated during inference: no tracking, no messages
                return None
            extras = outputs.FrameExtras()
            points = self._frame_3d(results, header, image_hw, s, extras)  # may wait briefly for depth
            with self._track_lock:
                if job.persistent:
                    self._remember_feedback(results, image_hw, s)
                out = self._build(results, header, image_hw, job, rgb, vocab.name if vocab else "", s,
                                  extras, points)
            with self._output_lock:  # what pause() waits for: the publish() calls only
                if self._discard(epoch, frame):
                    return None
                self._last_seq = frame.seq
                self._send(out)
        out.stages = clock.finish()
        now = host.get_clock().now().nanoseconds * 1e-9
        stamp = stamp_seconds(header)
        stats.processed(out.stages, stamp_tuple(header), None if stamp == 0.0 else now - stamp, len(results))
        return out

    def _discard(self, epoch: int, frame: Frame) -> bool:
        """Whether this frame's result must not be published (counted, logged); decisive under _output_lock."""
        stamp = f"{frame.msg.header.stamp.sec}.{frame.msg.header.stamp.nanosec:09d}"
        if epoch != self._epoch or not self._accepting:
            why = f"result of the frame stamped {stamp} dropped: the node was deactivated while it was processed"
        elif frame.seq < self._last_seq:
            why = (f"result of the frame stamped {stamp} dropped: a newer frame's result was already "
                   "published (outputs never go back in time)")
        else:
            return False
        self.host.stats.count("results_discarded", why)
        self.host.get_logger().info(why, throttle_duration_sec=5.0)
        return True

    def _next_job(self, image_hw: tuple[int, int], frame_id: str, s: NodeSettings,
                  stamped: Optional[PromptSet] = None, fallback: bool = False) -> Optional[Job]:
        """The frame's job. ``stamped``: a stamped prompt set matched to this frame; ``fallback``: the
        frame is the pending one, which runs its own job if none of the set's prompts applies."""
        board = self.board
        if stamped is not None:
            oneshot, persistent, query_once, query = stamped, None, None, None
        else:
            with board.lock:
                oneshot, board.oneshot = board.oneshot, None
                persistent = board.persistent
                query_once, board.oneshot_query = board.oneshot_query, None
                query = board.persistent_query
        if oneshot is not None:
            job = self._prompt_job(oneshot, False, image_hw, frame_id, s)
            if job.prompts or (stamped is not None and not fallback):
                return job
            # None of the one-shot prompts applies (another camera, another aspect ratio, all
            # outside): they are rejected and counted, and the frame runs what it would have run
            # without them. With nothing else to run, the empty result answers the request.
            other = (self._next_job(image_hw, frame_id, s) if stamped is not None
                     else self._default_job(image_hw, frame_id, s, persistent, query_once, query))
            if other is None:
                return job
            other.rejected = job.rejected + other.rejected
            return other
        return self._default_job(image_hw, frame_id, s, persistent, query_once, query)

    def _default_job(self, image_hw: tuple[int, int], frame_id: str, s: NodeSettings, persistent: Optional[PromptSet],
                     query_once: Optional[TextRequest], query: Optional[TextRequest]) -> Optional[Job]:
        """The job after one-shot prompts: one-shot query, persistent prompts, persistent query, mode."""
        if persistent is not None and query_once is None:
            return self._prompt_job(persistent, True, image_hw, frame_id, s)
        text = query_once or query
        if text is None and s.mode == "text" and s.query.strip():
            text = TextRequest(s.query.strip())
        if text is not None:
            return Job("text", text=text)
        if s.mode == "everything":
            return Job("everything")
        return None

    def _prompt_job(self, prompt_set: PromptSet, persistent: bool, image_hw: tuple[int, int], frame_id: str,
                    s: NodeSettings) -> Job:
        """Prompts fitted to this frame; the rejected ones counted and warned about."""
        job = Job("prompt", prompt_set=prompt_set, persistent=persistent)
        if prompt_set.frame_id and frame_id and prompt_set.frame_id != frame_id:
            job.rejected.append(f"prompts were made for frame {prompt_set.frame_id!r}, the image is "
                                f"{frame_id!r}: not applied")
        else:
            fitted = fit_prompts(prompt_set, image_hw)
            job.prompts, job.indices, job.rejected = fitted.prompts, fitted.indices, fitted.rejected
            if persistent and s.prompt_mask_feedback:
                job.prompts = self._with_feedback(job.prompts, job.indices, image_hw)
        if job.rejected:
            self.host.stats.count("prompts_rejected", job.rejected[-1], n=len(job.rejected))
            for reason in job.rejected:
                # Persistent prompts would repeat the same warning every frame.
                self.host.warn_once_per("prompt", f"prompt rejected: {reason}", force=not persistent)
        return job

    def run_job(self, predictor: Any, job: Job, s: NodeSettings, clock: StageClock) -> list:
        """Decode + recognition for one job (predictor lock held, image set)."""
        # predict()/everything() name their regions inside: the predictor sums that time itself.
        named_before = predictor.recognition_seconds
        t0 = time.perf_counter()
        options = s.everything_options()
        if job.mode == "prompt":
            results = predictor.predict(job.prompts, multimask_output=s.multimask_output)
            for r in results:  # back to the index in the PromptArray the prompt came from
                r.prompt_index = job.indices[r.prompt_index]
            # An empty mask is no object (#24 item 3): its label, score and IoU describe nothing.
            # Left out here, before tracking, 3D, mask feedback and every output.
            results, empty = split_empty(results)
            if empty:
                self.host.stats.count("empty_masks", n=len(empty))
                self.host.warn_once_per("empty", "prompt(s) gave an empty mask (no pixel above the mask threshold: "
                                        "a blank frame, or nothing there): not an object, left out of the "
                                        "outputs (diagnostics: empty_masks)")
        elif job.mode == "everything":
            results = predictor.everything(options)
            self._explain_empty_everything(predictor, results)
        else:
            # Candidates from everything mode (more than we return), then the phrase picks.
            candidates = predictor.everything(dataclasses.replace(options, max_instances=max(100, s.max_instances)))
            self._explain_empty_everything(predictor, candidates)
            named = predictor.recognition_seconds - named_before
            clock.add("decode", time.perf_counter() - t0 - named)
            t1 = time.perf_counter()
            text = job.text
            results = predictor.query(text.text, candidates=candidates,
                                      max_instances=text.max_instances or s.max_instances,
                                      min_score=text.min_score or s.text_min_score)
            clock.add("recognition", named + time.perf_counter() - t1)
            return results
        named = predictor.recognition_seconds - named_before
        clock.add("decode", time.perf_counter() - t0 - named)
        clock.add("recognition", named)
        return results

    def _explain_empty_everything(self, predictor: Any, results: list) -> None:
        """Everything mode kept nothing from its candidates: say which threshold removed what
        (a weakly trained model fails SAM's defaults), at most once per period, and count it."""
        report = getattr(predictor, "last_everything_report", None)
        if results or report is None or not report.candidates:
            return
        reason = report.explain()
        self.host.stats.count("everything_empty")
        self.host.warn_once_per("everything", reason + "; lower the parameter that removed most")

    def _build(self, results: list, header: Any, image_hw: tuple[int, int], job: Job, rgb: Any,
               vocabulary_name: str, s: NodeSettings, extras: Any, points: Optional[list]) -> FrameOutput:
        """Track and build one frame's output messages (under _track_lock; nothing is sent here)."""
        query = job.text.text if job.text is not None else ""
        if s.tracking:
            extras.track_ids = self._track(results, job, header, image_hw, s)
        if job.prompt_set is not None and job.prompt_set.sources:
            extras.sources = [job.prompt_set.source_of(r.prompt_index) for r in results]
        masks = outputs.labeled_mask_array(results, header, image_hw, mode=job.mode, query=query,
                                           vocabulary_name=vocabulary_name,
                                           vocabulary_version=self.host.vocab_version, extras=extras,
                                           mask_encoding=s.mask_encoding)
        out = FrameOutput(mode=job.mode, masks=masks, rejected=job.rejected)
        if s.publish_instance_ids:
            if s.instance_ids_format == "png":
                out.instance_ids = outputs.instance_ids_png_msg(results, header, image_hw, extras.track_ids)
                out.ids_publisher = "instance_ids_png"
            else:
                out.instance_ids = outputs.instance_ids_msg(results, header, image_hw, extras.track_ids)
        if s.publish_overlay:
            checked = [check_prompt(p, image_hw) for p in job.prompts]
            out.overlay = outputs.overlay_msg(rgb, results, header, checked, extras.track_ids)
        if s.publish_points and points is not None:
            from std_msgs.msg import Header

            out.points = outputs.points_msg(points, Header(stamp=header.stamp, frame_id=extras.position_frame_id),
                                            extras.track_ids)
        if "detections" in self.host.publishers_by_name:
            out.detections = outputs.detections_msg(results, header, extras.track_ids, s.detection_class_id)
            out.detections_3d = outputs.detections_3d_msg(results, header, extras, s.detection_class_id)
        # publish_markers off: what is still shown is deleted once, then nothing.
        markers = self.markers.update(results if s.publish_markers else [], header,
                                      extras if s.publish_markers else outputs.FrameExtras())
        if markers.markers:  # nothing shown and nothing to delete: no message
            out.markers = markers
        return out

    def _send(self, out: FrameOutput) -> None:
        """Publish what :meth:`_build` made (under _output_lock). Auxiliary outputs first: a consumer
        that got ~/masks finds the rest already sent."""
        pubs = self.host.publishers_by_name
        for name in ("instance_ids", "overlay", "points", "detections", "detections_3d", "markers", "masks"):
            msg = getattr(out, name)
            topic = out.ids_publisher if name == "instance_ids" else name
            if msg is not None and topic in pubs:
                pubs[topic].publish(msg)

    def _keep_encoding(self, frame: Frame, predictor: Any) -> None:
        """Remember ``frame``'s encoding; only the newest ENCODED_FRAMES keep theirs (memory)."""
        frame.encoded = (predictor, predictor.image_state())
        self._encoded.append(frame)
        while len(self._encoded) > ENCODED_FRAMES:
            self._encoded.popleft().encoded = None

    # ------------------------------------------------------------------ tracking, feedback, 3D
    def _track(self, results: list, job: Job, header: Any, image_hw: tuple[int, int], s: NodeSettings) -> list[int]:
        config = s.tracker_config()
        if self.tracker.config != config:
            self.tracker.config = config
        # Detector-prompted instances are tracked by the detector's box and class (what the detector
        # vouches for); the others by their mask and OVSAM class.
        detector_boxes = {}
        if job.prompt_set is not None and job.prompt_set.sources:
            for prompt, index in zip(job.prompts, job.indices):
                source = job.prompt_set.source_of(index)
                if source is not None and prompt.box is not None:
                    detector_boxes[index] = (prompt.box, source.class_id)
        observations = []
        for r in results:
            key = ("prompt", self.board.generation, r.prompt_index) if job.persistent else None
            if r.prompt_index in detector_boxes:
                box, label = detector_boxes[r.prompt_index]
                # The box as the prompt path uses it (clipped to the image, corners ordered): a detector
                # box of 1e6 x 1e6 px must not become a 1e12-pixel array.
                x0, y0, x1, y1 = (int(round(float(v))) for v in check_prompt(Prompt(box=box), image_hw).box)
                mask = CroppedMask(np.ones((y1 - y0, x1 - x0), bool), x0, y0)
            else:
                x0, y0, x1, y1 = r.box
                mask = CroppedMask(np.asarray(r.mask_crop, bool), x0, y0)  # no full-frame mask needed
                label = r.labels[0].class_index if r.labels else -1
            observations.append(Observation(mask, label, key))
        stamp = stamp_seconds(header)
        return self.tracker.update(observations, stamp if stamp > 0 else time.monotonic())

    def _with_feedback(self, prompts: list[Prompt], indices: list[int], image_hw: tuple[int, int]) -> list[Prompt]:
        """Persistent prompts with their previous low-res mask as mask_input (same prompts and frame size)."""
        if self._feedback_key != (self.board.generation, image_hw):
            return prompts
        return [dataclasses.replace(p, mask_input=self._feedback[i]) if i in self._feedback else p
                for p, i in zip(prompts, indices)]

    def _remember_feedback(self, results: list, image_hw: tuple[int, int], s: NodeSettings) -> None:
        if not s.prompt_mask_feedback:
            self._feedback = {}
            return
        self._feedback_key = (self.board.generation, image_hw)
        self._feedback = {r.prompt_index: r.low_res_logits for r in results if r.low_res_logits is not None}

    def _frame_3d(self, results: list, header: Any, image_hw: tuple[int, int], s: NodeSettings,
                  extras: Any) -> Optional[list]:
        """Per-instance 3D from the depth image stamped like this frame; None (and a counted, logged
        reason in ``extras.position_status``) when it cannot be done. Never raises: 3D is optional."""
        if not self.depth_seen:
            return None  # no depth stream: nothing asked for, nothing to report
        try:
            depth_msg = self._depth_for(header, s)
            info = self.camera_info
            if info is None:
                raise DepthError("no CameraInfo received on depth/camera_info")
            intrinsics = Intrinsics.from_camera_info(info)
            depth = depth_to_metres(image_to_numpy(depth_msg), depth_msg.encoding, range_check=self.depth_range)
            check_pairing(depth.shape, image_hw, intrinsics)
            if not np.isfinite(depth).any():
                raise DepthError("the depth image has no valid pixel (all 0 / NaN)")
            points = [backproject(r.mask, depth, intrinsics) for r in results]
            frame_id = depth_msg.header.frame_id or header.frame_id
            note = ""
            if s.target_frame and s.target_frame != frame_id:
                points, frame_id, note = self._to_target(points, frame_id, header, s.target_frame)
            extras.geometry = [instance_geometry(p) for p in points]
            problem = self.depth_range.last_problem  # used as it is (no unit is guessed), but said
            if problem:
                self.host.stats.count("depth_implausible", _shorten(problem))
                note = "; ".join(filter(None, (note, _shorten(problem))))
        except (DepthError, ImageConversionError, ValueError) as error:
            reason = _shorten(f"3D skipped: {error}")
            self.host.stats.count("depth_skipped", reason)
            self.host.warn_once_per("depth", reason)
            extras.position_status = reason
            return None
        extras.position_frame_id, extras.position_status = frame_id, note
        return points

    def _depth_for(self, header: Any, s: NodeSettings) -> Any:
        """The depth image paired with this frame by stamp (waits briefly for one still on its way)."""
        stamp, tolerance = header_stamp_ns(header), int(round(s.depth_tolerance * 1e9))
        deadline = time.monotonic() + DEPTH_WAIT
        while True:
            found = self.depths.find(stamp, "", tolerance, time.monotonic())
            if found.status == MATCHED:
                return found.entry.item
            if found.status != PENDING or time.monotonic() >= deadline:
                raise DepthError(f"no depth image within {s.depth_tolerance * 1000:g} ms of the frame: "
                                 f"{found.detail}")
            time.sleep(0.005)

    def _to_target(self, points: list, frame_id: str, header: Any, target: str) -> tuple[list, str, str]:
        """Points into ``target`` via tf2 where it is installed; otherwise unchanged, with the reason."""
        try:
            import tf2_ros
        except ImportError:
            note = f"target_frame {target!r} ignored: tf2_ros is not installed; 3D is in {frame_id!r}"
            self.host.warn_once_per("tf", note)
            self.host.stats.count("tf_unavailable", note)
            return points, frame_id, note
        from rclpy.duration import Duration
        from rclpy.time import Time

        try:
            if self._tf_buffer is None:
                self._tf_buffer = tf2_ros.Buffer()
                self._tf_listener = tf2_ros.TransformListener(self._tf_buffer, self.host)
            tf = self._tf_buffer.lookup_transform(target, frame_id, Time.from_msg(header.stamp),
                                                  timeout=Duration(seconds=0.05)).transform
        except Exception as error:  # tf2 lookup/extrapolation/connectivity errors
            note = f"no transform {frame_id!r} -> {target!r} ({type(error).__name__}); 3D is in {frame_id!r}"
            self.host.warn_once_per("tf", note)
            self.host.stats.count("tf_unavailable", note)
            return points, frame_id, note
        t, q = tf.translation, tf.rotation
        moved = [transform_points(p, (t.x, t.y, t.z), (q.x, q.y, q.z, q.w)) for p in points]
        return moved, target, ""


def _same_camera(frame_id: str, frame: Frame) -> bool:
    """Whether prompts made for camera ``frame_id`` apply to ``frame`` ('' on either side: any)."""
    other = frame.msg.header.frame_id
    return not frame_id or not other or frame_id == other


def _apply_threads(num_threads: int) -> None:
    import torch

    if num_threads > 0 and torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)


def _shorten(text: str, limit: int = 500) -> str:
    """Error messages may quote a 10k-name vocabulary: keep logs and responses readable."""
    return text if len(text) <= limit else text[: limit - 20] + f"... ({len(text)} chars)"
