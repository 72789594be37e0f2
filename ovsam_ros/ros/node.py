"""The OVSAM perception node: camera frames + prompts in, named instance masks out.

Lifecycle (``rclpy.lifecycle``): *configure* loads the model and creates the
topics/services, *activate* starts the worker and enables the publishers,
*deactivate* stops both, *cleanup* frees the model. ``ovsam-node`` configures
and activates by itself unless ``--no-autostart``.

Threads: the image callbacks only store the newest frame (a pending frame that
is replaced counts as dropped); one worker thread runs inference on the newest
frame; prompt, text and service callbacks run on a MultiThreadedExecutor in
their own callback groups and never wait behind inference, except the
``segment`` service, which needs the model and waits for the current frame.

What a frame is used for, first match wins: one-shot prompts, a one-shot text
query, persistent prompts, a persistent text query, then parameter ``mode``
(``everything``; ``text`` with parameter ``query``; ``prompt`` = nothing to do).

Topics (inputs from other nodes relative, so namespaces and remaps work; the rest under the node):

===========================  ====  ==========================================
``image``                    sub   sensor_msgs/Image (``image_transport: raw``)
``image/compressed``         sub   sensor_msgs/CompressedImage (``image_transport: compressed``)
``~/prompts``                sub   ovsam_ros/PromptArray (reliable, transient-local)
``~/text_query``             sub   ovsam_ros/TextQuery (reliable, transient-local)
``detection_prompts``        sub   vision_msgs/Detection2DArray (if vision_msgs is installed)
``depth/image``              sub   sensor_msgs/Image 16UC1 (mm) / 32FC1 (m), aligned to ``image``
``depth/camera_info``        sub   sensor_msgs/CameraInfo of the depth image
``~/masks``                  pub   ovsam_ros/LabeledMaskArray (header = the image's)
``~/instance_ids``           pub   sensor_msgs/Image mono16, pixel = instance_id + 1
``~/overlay``                pub   sensor_msgs/Image rgb8 (``publish_overlay``)
``~/detections``             pub   vision_msgs/Detection2DArray (if vision_msgs is installed)
``~/points``                 pub   sensor_msgs/PointCloud2 (``publish_points``)
``/diagnostics``             pub   diagnostic_msgs/DiagnosticArray (every lifecycle state)
``~/set_vocabulary``         srv   ovsam_ros/SetVocabulary
``~/segment``                srv   ovsam_ros/Segment
``~/clear_prompts``          srv   std_srvs/Trigger
===========================  ====  ==========================================

Camera QoS (``input_reliability``, ``input_depth``) and output QoS (``output_reliability``)
are parameters (ovsam_ros.ros.qos).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

import numpy as np

from ovsam_ros.prompts import Prompt, PromptError, check_prompt
from ovsam_ros.robot.depth3d import (DepthError, Intrinsics, backproject, check_pairing, depth_to_metres,
                                     instance_geometry, transform_points)
from ovsam_ros.robot.detections import prompts_from_detections
from ovsam_ros.robot.frame_buffer import MATCHED, PENDING, StampedBuffer, header_stamp_ns
from ovsam_ros.robot.tracking import CroppedMask, InstanceTracker, Observation
from ovsam_ros.ros import outputs
from ovsam_ros.ros.diagnostics import NodeStats, StageClock, diagnostic_array, summary_line
from ovsam_ros.ros.frames import Frame, LatestFrameSlot, decode_frame, stamp_seconds, stamp_tuple
from ovsam_ros.ros.image_conversion import ImageConversionError, image_to_numpy
from ovsam_ros.ros.param_checks import ParamsFileError, read_params_file, section_warning, unknown_parameters
from ovsam_ros.ros.parameters import CONFIGURE_TIME, MODES, PARAMETERS, SPECS, NodeSettings, descriptor, validate
from ovsam_ros.ros.prompt_input import PromptSet, fit_prompts, prompt_from_msg, prompt_set_from_msg
from ovsam_ros.ros.qos import (COMMAND_QOS, DEPTH_QOS, DETECTION_QOS, DIAGNOSTICS_QOS,  # noqa: F401 (re-exported)
                               OUTPUT_QOS, SENSOR_QOS, incompatible_qos_callbacks, input_qos, output_qos)
from ovsam_ros.ros.vocabulary_access import allowed_dirs, resolve_request

STAMPED_QUEUE = 32  # stamped prompt sets waiting for their frame; more and the oldest is dropped, counted
DEPTH_WAIT = 0.1  # s the worker waits for a depth image stamped like its frame that is still on its way
ENCODED_FRAMES = 2  # frames whose image encoding is kept, so a late prompt for them skips the encoder


@dataclass
class TextRequest:
    text: str
    max_instances: int = 0  # 0 = parameter max_instances
    min_score: float = 0.0  # 0 = parameter text_min_score


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
    """What one processed frame produced (returned by :meth:`OVSAMNode.process_frame` for tests/tools)."""

    mode: str
    masks: Any  # LabeledMaskArray
    instance_ids: Any = None
    overlay: Any = None
    stages: dict[str, float] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)
    points: Any = None  # PointCloud2 (publish_points)


def encode_vocabulary_text(predictor: Any, spec: Any):
    """Load and encode a vocabulary WITHOUT touching the predictor's state.

    Runs outside the predictor lock so frames keep flowing while a large
    vocabulary (10k+ names) is encoded; the result is swapped in under the lock
    with ``predictor.set_vocabulary(embeddings)``. Shares the predictor's
    on-disk text cache and its synonym policy (names_only / max_synonyms).
    """
    return predictor.encode_vocabulary(spec, progress=False)


class OVSAMNode(LifecycleNode):
    """Lifecycle node around :class:`ovsam_ros.predictor.OVSAMPredictor`."""

    def __init__(self, node_name: str = "ovsam", *, start_worker: bool = True, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._start_worker = start_worker  # tests drive process_frame() themselves
        self.stats = NodeStats()
        self.param_errors: dict[str, str] = {}
        self._declare_parameters()
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.predictor: Any = None
        self.last_error = ""  # reason of the last failed transition / request
        self._predictor_lock = threading.Lock()  # the predictor holds one image: one user at a time
        self._state_lock = threading.Lock()  # prompts and queries
        self._oneshot_prompts: Optional[PromptSet] = None
        self._persistent_prompts: Optional[PromptSet] = None
        self._oneshot_query: Optional[TextRequest] = None
        self._persistent_query: Optional[TextRequest] = None
        self._slot = LatestFrameSlot()
        self._stop = threading.Event()
        self._worker: Optional[threading.Thread] = None
        self._active = False
        self._recognition_s = 0.0
        self._vocab_version = ""
        self._out_pubs: dict[str, Any] = {}
        self._owned_entities: list[tuple[str, Any]] = []
        self._last_diag = 0.0
        self._last_diag_snapshot: Optional[dict] = None
        self._last_log = time.monotonic()
        self._last_warnings: dict[str, tuple[str, float, int]] = {}
        # Robot features: frames by stamp, prompts waiting for their frame, depth, tracks.
        s = self.settings
        self._frames: StampedBuffer[Frame] = StampedBuffer(s.frame_buffer_size, s.frame_buffer_max_age)
        self._stamped: deque[tuple[PromptSet, float]] = deque()
        self._depths: StampedBuffer[Any] = StampedBuffer(10, s.frame_buffer_max_age)
        self._depth_seen = False
        self._camera_info: Any = None
        self._tracker = InstanceTracker(s.tracker_config())
        self._persistent_generation = 0  # bumps when persistent prompts are replaced (new track keys)
        self._feedback: dict[int, np.ndarray] = {}  # prompt_index -> low-res logits (prompt_mask_feedback)
        self._feedback_key: tuple = ()
        self._tf_buffer: Any = None
        self._tf_listener: Any = None
        self._encoded: deque[Frame] = deque()  # frames holding an encoding (newest last)
        self._last_input = time.monotonic()  # last image received (or activation)
        self._image_topic = ""
        # Diagnostics in EVERY lifecycle state (a failed configure is when they matter most):
        # a plain publisher and timer owned by the node, not created by configure.
        from diagnostic_msgs.msg import DiagnosticArray

        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", DIAGNOSTICS_QOS)
        self._diag_timer = self.create_timer(0.1, self._on_diagnostics_tick,
                                             callback_group=MutuallyExclusiveCallbackGroup())

    # ------------------------------------------------------------------ parameters
    def _declare_parameters(self) -> None:
        values = {}
        for spec in PARAMETERS:
            try:
                param = self.declare_parameter(spec.name, spec.default, descriptor(spec))
            except (InvalidParameterValueException, InvalidParameterTypeException) as error:
                # Keep the node up; configure refuses until the value is fixed.
                self.param_errors[spec.name] = f"parameter {spec.name}: {error}"
                param = self.declare_parameter(spec.name, spec.default, descriptor(spec), ignore_override=True)
            values[spec.name] = param.value
            reason = validate(spec.name, param.value)
            if reason:
                self.param_errors[spec.name] = reason
        # rclpy drops overrides nobody declares: a typo ("mdoe") would start the default mode silently.
        given = list(getattr(self, "_parameter_overrides", {}) or {})
        declared = set(SPECS) | {name for name in given if self.has_parameter(name)}
        for name, reason in unknown_parameters(given, declared).items():
            self.param_errors[name] = f"{reason} (node {self.get_fully_qualified_name()})"
        for reason in self.param_errors.values():
            self.get_logger().error(f"invalid parameter: {reason}")
        bad = set(self.param_errors)
        self.settings = NodeSettings.from_values({k: (SPECS[k].default if k in bad else v) for k, v in values.items()})

    def _on_set_parameters(self, params: Sequence[Any]):
        from rcl_interfaces.msg import SetParametersResult

        changes = {}
        for param in params:
            if param.name not in SPECS:
                continue
            reason = validate(param.name, param.value)
            if reason is None and param.name in CONFIGURE_TIME and self.predictor is not None:
                reason = f"{param.name} is read when the node is configured; run the cleanup transition first"
            if reason:
                return SetParametersResult(successful=False, reason=reason)
            changes[param.name] = float(param.value) if SPECS[param.name].type is float else param.value
        self.settings = dataclasses.replace(self.settings, **changes)
        for name in changes:
            self.param_errors.pop(name, None)
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.param_errors:
            return self._fail("configure", "; ".join(self.param_errors.values()))
        s = self.settings
        self._apply_threads(s.num_threads)
        try:
            from ovsam_ros.loading import build_predictor

            t0 = time.perf_counter()
            predictor = build_predictor(s.model, vocabulary=s.vocabulary or None, device=s.device or None,
                                        precision=s.precision or None, top_k=s.top_k,
                                        clip_ensemble={"on": True, "off": False}.get(s.clip_ensemble),
                                        compile=s.compile or None,
                                        synonyms=s.synonyms or None)
        except Exception as error:  # a missing checkpoint, bad YAML, no CUDA, ...
            return self._fail("configure", f"could not load model {s.model!r}: {type(error).__name__}: {error}")
        self._instrument(predictor)
        self.predictor = predictor
        self._vocab_version = outputs.vocabulary_version(predictor)
        vocab = predictor.vocabulary
        self.get_logger().info(
            f"model {s.model!r} loaded in {time.perf_counter() - t0:.1f} s on {predictor.device} "
            f"({predictor.precision}); vocabulary {vocab.name if vocab else '-'} ({len(vocab) if vocab else 0} classes)")
        if not predictor.trained:
            self.get_logger().warning(
                "UNTRAINED MODEL: no trained checkpoint configured; masks and labels are MEANINGLESS "
                "(see the README, 'Weights')")
        try:
            self._create_interfaces()
        except Exception as error:  # rclpy would swallow it without a word
            self._release()
            return self._fail("configure", f"could not create topics/services: {type(error).__name__}: {error}")
        self.last_error = ""
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stats.reset()
        self._last_input = time.monotonic()
        self._stop.clear()
        self._slot.reopen()
        self._active = True
        if self._start_worker:
            self._worker = threading.Thread(target=self._worker_loop, name="ovsam-worker", daemon=True)
            self._worker.start()
        self.get_logger().info(f"active: mode {self.settings.mode!r}, waiting for {self.settings.image_transport} "
                               f"images on {self._image_topic}")
        return super().on_activate(state)  # enables the lifecycle publishers

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self.stop_worker()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self.stop_worker()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self.stop_worker()
        self._release()
        return TransitionCallbackReturn.SUCCESS  # back to unconfigured, can be configured again

    def _fail(self, transition: str, reason: str) -> TransitionCallbackReturn:
        self.last_error = reason
        self.get_logger().error(f"{transition} failed: {reason}")
        return TransitionCallbackReturn.FAILURE

    def autostart(self) -> bool:
        """configure + activate (what ``ovsam-node`` does unless --no-autostart); True if active."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().error("autostart: configure failed; the node stays unconfigured "
                                    "(fix the parameters, then configure again)")
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS

    @property
    def state_label(self) -> str:
        return self._state_machine.current_state[1]

    def stop_worker(self, timeout: float = 60.0) -> None:
        self._stop.set()
        self._slot.close()
        worker, self._worker = self._worker, None
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout)
        self._slot.clear()

    def _release(self) -> None:
        self._destroy_interfaces()
        with self._predictor_lock:
            device = getattr(self.predictor, "device", None)
            self.predictor = None
        with self._state_lock:
            self._oneshot_prompts = self._persistent_prompts = None
            self._oneshot_query = self._persistent_query = None
            self._stamped.clear()
        self._frames.clear()
        self._depths.clear()
        self._depth_seen, self._camera_info = False, None
        self._tracker.reset()
        for frame in self._encoded:
            frame.encoded = None
        self._encoded.clear()
        self._feedback = {}
        self._tf_buffer = self._tf_listener = None
        gc.collect()
        if device is not None and device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ interfaces
    def _create_interfaces(self) -> None:
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
        from std_srvs.srv import Trigger

        from ovsam_ros.msg import LabeledMaskArray, PromptArray, TextQuery
        from ovsam_ros.srv import Segment, SetVocabulary

        s = self.settings
        images, commands = MutuallyExclusiveCallbackGroup(), MutuallyExclusiveCallbackGroup()
        vocab_group, segment_group = MutuallyExclusiveCallbackGroup(), MutuallyExclusiveCallbackGroup()
        depth_group = MutuallyExclusiveCallbackGroup()
        out_qos = output_qos(s.output_reliability)
        pubs = {
            "masks": self.create_lifecycle_publisher(LabeledMaskArray, "~/masks", out_qos),
            "instance_ids": self.create_lifecycle_publisher(Image, "~/instance_ids", out_qos),
            "overlay": self.create_lifecycle_publisher(Image, "~/overlay", out_qos),
            "points": self.create_lifecycle_publisher(PointCloud2, "~/points", out_qos),
        }
        if outputs.Detection2DArray is not None:
            pubs["detections"] = self.create_lifecycle_publisher(outputs.Detection2DArray, "~/detections", out_qos)
        self._out_pubs = pubs
        # ONE camera subscription: subscribing to both would make the camera's compressed plugin
        # encode every frame and interleave raw and lossy frames in the newest-frame slot.
        if s.image_transport == "compressed":
            image_type, image_name, on_image = CompressedImage, "image/compressed", self._on_compressed
        else:
            image_type, image_name, on_image = Image, "image", self._on_image
        self._image_topic = self.resolve_topic_name(image_name)
        other = "reliable" if s.input_reliability == "best_effort" else "best_effort"
        image_events = incompatible_qos_callbacks(
            self._report_qos, self._image_topic,
            f"Set input_reliability:={other} (now {s.input_reliability}) or change the camera's QoS.")
        command_events = incompatible_qos_callbacks(
            self._report_qos, "~/prompts or ~/text_query",
            "Publish prompts and text queries RELIABLE + TRANSIENT_LOCAL "
            "(ros2 topic pub --qos-reliability reliable --qos-durability transient_local).")

        def subscribe(msg_type: Any, name: str, callback: Any, qos: Any, group: Any, events: Any) -> Any:
            kwargs = {"callback_group": group}
            if events is not None:
                kwargs["event_callbacks"] = events
            return self.create_subscription(msg_type, name, callback, qos, **kwargs)

        # What other nodes publish (camera, depth, a detector) is relative, so a launch file remaps
        # it; prompt inputs and services live under the node (~/): with an empty namespace, plain
        # relative names would land at /prompts, /segment, ... and collide with other nodes.
        self._owned_entities = [
            ("sub", subscribe(image_type, image_name, on_image, input_qos(s.input_reliability, s.input_depth),
                              images, image_events)),
            ("sub", subscribe(PromptArray, "~/prompts", self._on_prompts, COMMAND_QOS, commands, command_events)),
            ("sub", subscribe(TextQuery, "~/text_query", self._on_text_query, COMMAND_QOS, commands,
                              command_events)),
            ("sub", self.create_subscription(Image, "depth/image", self._on_depth, DEPTH_QOS,
                                             callback_group=depth_group)),
            ("sub", self.create_subscription(CameraInfo, "depth/camera_info", self._on_camera_info, DEPTH_QOS,
                                             callback_group=depth_group)),
            ("srv", self.create_service(Trigger, "~/clear_prompts", self._on_clear_prompts, callback_group=commands)),
            ("srv", self.create_service(SetVocabulary, "~/set_vocabulary", self._on_set_vocabulary,
                                        callback_group=vocab_group)),
            ("srv", self.create_service(Segment, "~/segment", self._on_segment, callback_group=segment_group)),
        ]
        if outputs.Detection2DArray is not None:  # vision_msgs is not on PyPI: only on full ROS installs
            self._owned_entities.append(("sub", self.create_subscription(
                outputs.Detection2DArray, "detection_prompts", self.on_detections, DETECTION_QOS,
                callback_group=commands)))

    def _report_qos(self, reason: str) -> None:
        self.stats.count("qos_incompatible", reason)
        self._warn_once_per("qos", reason, period=30.0)

    def _destroy_interfaces(self) -> None:
        for kind, entity in self._owned_entities:
            {"sub": self.destroy_subscription, "srv": self.destroy_service, "timer": self.destroy_timer}[kind](entity)
        self._owned_entities = []
        for pub in self._out_pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._out_pubs = {}

    # ------------------------------------------------------------------ inputs
    def _on_image(self, msg: Any) -> None:
        self._receive(msg, compressed=False)

    def _on_compressed(self, msg: Any) -> None:
        self._receive(msg, compressed=True)

    def _receive(self, msg: Any, compressed: bool) -> None:
        if not self._active:
            return
        self._last_input = time.monotonic()
        stamp = stamp_seconds(msg.header)
        age = None if stamp == 0.0 else self.get_clock().now().nanoseconds * 1e-9 - stamp
        if age is None:
            self.get_logger().warning("image with a zero timestamp: outputs will carry it unchanged",
                                      throttle_duration_sec=10.0)
        self.stats.received(age)
        frame = Frame(msg, compressed, time.monotonic())
        s = self.settings
        if (self._frames.capacity, self._frames.max_age) != (s.frame_buffer_size, s.frame_buffer_max_age):
            self._frames.configure(s.frame_buffer_size, s.frame_buffer_max_age)
            self._depths.configure(10, s.frame_buffer_max_age)
        self._frames.push(header_stamp_ns(msg.header), msg.header.frame_id, frame, frame.received)
        if self._slot.put(frame):
            self.stats.dropped()

    def _on_depth(self, msg: Any) -> None:
        if not self._active:
            return
        self._depth_seen = True
        self._depths.push(header_stamp_ns(msg.header), msg.header.frame_id, msg, time.monotonic())

    def _on_camera_info(self, msg: Any) -> None:
        self._camera_info = msg

    def on_detections(self, msg: Any) -> None:
        """``vision_msgs/Detection2DArray`` (or anything shaped like it): one prompt per detection."""
        s = self.settings
        converted = prompts_from_detections(msg, s.detection_prompt_type, s.detection_min_score)
        if converted.rejected:
            self.stats.count("prompts_rejected", converted.rejected[-1], n=len(converted.rejected))
            for reason in converted.rejected:
                self._warn_once_per("detection", f"detection rejected: {reason}")
        if not converted.prompts:
            return
        self._accept_oneshot(PromptSet(converted.prompts, (0, 0), msg.header.frame_id, False,
                                       stamp=header_stamp_ns(msg.header), sources=converted.sources,
                                       indices=converted.indices))

    def _accept_oneshot(self, prompt_set: PromptSet) -> None:
        """One-shot prompts: stamped ones wait for their frame, unstamped ones take the next frame."""
        with self._state_lock:
            if not prompt_set.stamp:
                self._oneshot_prompts = prompt_set
                return
            if len(self._stamped) >= STAMPED_QUEUE:
                self._stamped.popleft()
                self.stats.count("prompts_rejected", "stamped prompts waiting for their frame: queue full, "
                                 "oldest dropped")
            self._stamped.append((prompt_set, time.monotonic()))
        self._slot.wake()

    def _on_prompts(self, msg: Any) -> None:
        prompt_set = prompt_set_from_msg(msg)
        if not prompt_set.persistent:
            if prompt_set.prompts:
                self._accept_oneshot(prompt_set)
        else:
            with self._state_lock:
                # An empty persistent array clears the persistent prompts.
                self._persistent_prompts = prompt_set if prompt_set.prompts else None
                self._persistent_generation += 1
        kind = "persistent" if prompt_set.persistent else "one-shot"
        self.get_logger().debug(f"{len(prompt_set.prompts)} {kind} prompt(s) for "
                                f"{prompt_set.source_size[0]}x{prompt_set.source_size[1]}")

    def _on_text_query(self, msg: Any) -> None:
        text = msg.text.strip()
        request = TextRequest(text, int(msg.max_instances), float(msg.min_score))
        with self._state_lock:
            if not text:  # empty text clears the query
                self._persistent_query = self._oneshot_query = None
            elif msg.persistent:
                self._persistent_query = request
            else:
                self._oneshot_query = request

    def _on_clear_prompts(self, request: Any, response: Any) -> Any:
        with self._state_lock:
            cleared = sum(x is not None for x in (self._oneshot_prompts, self._persistent_prompts,
                                                  self._oneshot_query, self._persistent_query))
            cleared += len(self._stamped)
            self._oneshot_prompts = self._persistent_prompts = None
            self._oneshot_query = self._persistent_query = None
            self._stamped.clear()
            self._persistent_generation += 1
        response.success, response.message = True, f"cleared {cleared} prompt set(s)/quer(ies)"
        return response

    # ------------------------------------------------------------------ worker
    def _worker_loop(self) -> None:
        next_allowed = 0.0
        while not self._stop.is_set():
            rate = self.settings.max_rate_hz
            if rate > 0:
                # Sleep BEFORE taking: frames arriving meanwhile replace each other.
                delay = next_allowed - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
            frame = self._slot.take(timeout=0.5)
            if self._stop.is_set():
                continue
            try:
                frame, served = self._serve_stamped(frame)
                if frame is not None:
                    self.process_frame(frame)
                if rate > 0 and (served or frame is not None):
                    next_allowed = time.monotonic() + 1.0 / rate
            except Exception as error:  # never let one frame kill the worker
                reason = _shorten(f"{type(error).__name__}: {error}")
                self.stats.count("frames_failed", reason)
                self.get_logger().error(f"frame failed: {reason}", throttle_duration_sec=5.0)

    def process_pending(self) -> Optional[FrameOutput]:
        """Serve due stamped prompts and the pending frame now, in this thread (tests and tools
        without the worker); the last output produced, or None."""
        frame, served = self._serve_stamped(self._slot.take(timeout=0))
        out = self.process_frame(frame) if frame is not None else None
        return out if out is not None else (served[-1] if served else None)

    def _serve_stamped(self, frame: Optional[Frame]) -> tuple[Optional[Frame], list[FrameOutput]]:
        """Run every stamped prompt set whose frame is known: on that frame if still buffered, else
        on the newest (``frame``, the pending one, if any), counted. Sets whose stamp is newer than
        every buffered frame wait (up to frame_buffer_max_age). Returns ``frame`` unless a prompt set
        used it, and the outputs."""
        with self._state_lock:
            requests = list(self._stamped)
            self._stamped.clear()
        if not requests:
            return frame, []
        s = self.settings
        tolerance = int(round(s.stamp_tolerance * 1e9))
        waiting, served = [], []
        for prompt_set, requested in requests:
            now = time.monotonic()
            found = self._frames.find(prompt_set.stamp, prompt_set.frame_id, tolerance, now, requested)
            if found.status == PENDING:
                waiting.append((prompt_set, requested))
                continue
            if found.status == MATCHED:
                target = found.entry.item
                self.stats.count("prompts_on_stamped_frame")
            else:
                newest = self._frames.newest(prompt_set.frame_id)
                target = frame if frame is not None else (newest.item if newest is not None else None)
                reason = f"the frame of stamped prompts is gone ({found.status}: {found.detail})"
                if target is None:
                    self.stats.count("prompts_rejected", reason + "; no frame to run them on")
                    self._warn_once_per("stamped", reason + "; dropped: no frame to run them on")
                    continue
                self.stats.count("prompts_on_newest_frame", reason)
                self._warn_once_per("stamped", reason + "; ran on the newest frame")
            if target is frame:
                frame = None  # the pending frame serves these prompts instead of its default job
            out = self.process_frame(target, prompt_set=prompt_set)
            if out is not None:
                served.append(out)
        if waiting:
            with self._state_lock:
                self._stamped.extendleft(reversed(waiting))
        return frame, served

    def process_frame(self, frame: Frame, prompt_set: Optional[PromptSet] = None) -> Optional[FrameOutput]:
        """Decode, infer, publish one frame; None if it was unusable or there was nothing to do.

        ``prompt_set``: run these one-shot prompts (a stamped set matched to this frame) instead
        of the frame's default job."""
        s = self.settings
        clock = StageClock()
        # Since the image callback (thread hand-over; longer for a buffered frame served by stamped prompts).
        clock.add("queue", max(0.0, time.monotonic() - frame.received))
        header = frame.msg.header
        with clock.stage("preprocess"):
            try:
                rgb = decode_frame(frame.msg, frame.compressed)
            except ImageConversionError as error:
                reason = f"image rejected: {_shorten(str(error))}"
                self.stats.count("frames_rejected", reason)
                self._warn_once_per("image", reason)
                return None
        image_hw = (int(rgb.shape[0]), int(rgb.shape[1]))
        job = self._next_job(image_hw, header.frame_id, s, prompt_set)
        if job is None:
            self.stats.count("frames_idle")
            return None
        results: list = []
        with self._predictor_lock:
            predictor = self.predictor
            if predictor is None:
                return None
            self._apply_threads(s.num_threads)
            predictor.top_k = s.top_k
            if job.mode != "prompt" or job.prompts:  # all prompts rejected: nothing to encode
                with clock.stage("encode"):
                    if frame.encoded is not None and frame.encoded[0] is predictor:
                        predictor.restore_image_state(frame.encoded[1])  # a late prompt: encoded already
                    else:
                        predictor.set_image(rgb)
                        self._keep_encoding(frame, predictor)
                results = self._run_job(predictor, job, s, clock)
            vocab = predictor.vocabulary
        if job.persistent:
            self._remember_feedback(results, image_hw, s)
        with clock.stage("publish"):
            out = self._publish(results, header, image_hw, job, rgb, vocab.name if vocab else "", s)
        out.stages = clock.finish()
        now = self.get_clock().now().nanoseconds * 1e-9
        stamp = stamp_seconds(header)
        self.stats.processed(out.stages, stamp_tuple(header), None if stamp == 0.0 else now - stamp, len(results))
        return out

    def _next_job(self, image_hw: tuple[int, int], frame_id: str, s: NodeSettings,
                  stamped: Optional[PromptSet] = None) -> Optional[Job]:
        if stamped is not None:
            oneshot, persistent, query_once, query = stamped, None, None, None
        else:
            with self._state_lock:
                oneshot, self._oneshot_prompts = self._oneshot_prompts, None
                persistent = self._persistent_prompts
                query_once, self._oneshot_query = self._oneshot_query, None
                query = self._persistent_query
        prompt_set = oneshot if oneshot is not None else (None if query_once is not None else persistent)
        if prompt_set is not None:
            job = Job("prompt", prompt_set=prompt_set, persistent=oneshot is None)
            if prompt_set.frame_id and frame_id and prompt_set.frame_id != frame_id:
                job.rejected.append(f"prompts were made for frame {prompt_set.frame_id!r}, the image is "
                                    f"{frame_id!r}: not applied")
            else:
                fitted = fit_prompts(prompt_set, image_hw)
                job.prompts, job.indices, job.rejected = fitted.prompts, fitted.indices, fitted.rejected
                if job.persistent and s.prompt_mask_feedback:
                    job.prompts = self._with_feedback(job.prompts, job.indices, image_hw)
            if job.rejected:
                self.stats.count("prompts_rejected", job.rejected[-1], n=len(job.rejected))
                for reason in job.rejected:
                    # Persistent prompts would repeat the same warning every frame.
                    self._warn_once_per("prompt", f"prompt rejected: {reason}", force=oneshot is not None)
            return job
        text = query_once or query
        if text is None and s.mode == "text" and s.query.strip():
            text = TextRequest(s.query.strip())
        if text is not None:
            return Job("text", text=text)
        if s.mode == "everything":
            return Job("everything")
        return None

    def _run_job(self, predictor: Any, job: Job, s: NodeSettings, clock: StageClock) -> list:
        """Decode + recognition for one job (predictor lock held, image set)."""
        self._recognition_s = 0.0
        t0 = time.perf_counter()
        options = s.everything_options()
        if job.mode == "prompt":
            results = predictor.predict(job.prompts, multimask_output=s.multimask_output)
            for r in results:  # back to the index in the PromptArray the prompt came from
                r.prompt_index = job.indices[r.prompt_index]
        elif job.mode == "everything":
            results = predictor.everything(options)
            self._explain_empty_everything(predictor, results)
        else:
            # Candidates from everything mode (more than we return), then the phrase picks.
            candidates = predictor.everything(dataclasses.replace(options, max_instances=max(100, s.max_instances)))
            self._explain_empty_everything(predictor, candidates)
            clock.add("decode", time.perf_counter() - t0 - self._recognition_s)
            t1 = time.perf_counter()
            text = job.text
            results = predictor.query(text.text, candidates=candidates,
                                      max_instances=text.max_instances or s.max_instances,
                                      min_score=text.min_score or s.text_min_score)
            clock.add("recognition", self._recognition_s + time.perf_counter() - t1)
            return results
        clock.add("decode", time.perf_counter() - t0 - self._recognition_s)
        clock.add("recognition", self._recognition_s)
        return results

    def _instrument(self, predictor: Any) -> None:
        """Time the recognition step inside predict()/everything() (they call label_embeddings)."""
        original = predictor.label_embeddings

        def timed(embeddings):
            t0 = time.perf_counter()
            try:
                return original(embeddings)
            finally:
                self._recognition_s += time.perf_counter() - t0

        predictor.label_embeddings = timed

    def _publish(self, results: list, header: Any, image_hw: tuple[int, int], job: Job, rgb: Any,
                 vocabulary_name: str, s: NodeSettings) -> FrameOutput:
        query = job.text.text if job.text is not None else ""
        extras = outputs.FrameExtras()
        if s.tracking:
            extras.track_ids = self._track(results, job, header, s)
        if job.prompt_set is not None and job.prompt_set.sources:
            extras.sources = [job.prompt_set.source_of(r.prompt_index) for r in results]
        points = self._frame_3d(results, header, image_hw, s, extras)
        masks = outputs.labeled_mask_array(results, header, image_hw, mode=job.mode, query=query,
                                           vocabulary_name=vocabulary_name, vocabulary_version=self._vocab_version,
                                           extras=extras)
        out = FrameOutput(mode=job.mode, masks=masks, rejected=job.rejected)
        pubs = self._out_pubs
        # Auxiliary outputs first: a consumer that got ~/masks finds the rest already sent.
        if s.publish_instance_ids:
            out.instance_ids = outputs.instance_ids_msg(results, header, image_hw, extras.track_ids)
            if "instance_ids" in pubs:
                pubs["instance_ids"].publish(out.instance_ids)
        if s.publish_overlay:
            checked = [check_prompt(p, image_hw) for p in job.prompts]
            out.overlay = outputs.overlay_msg(rgb, results, header, checked, extras.track_ids)
            if "overlay" in pubs:
                pubs["overlay"].publish(out.overlay)
        if s.publish_points and points is not None:
            from std_msgs.msg import Header

            out.points = outputs.points_msg(points, Header(stamp=header.stamp, frame_id=extras.position_frame_id),
                                            extras.track_ids)
            if "points" in pubs:
                pubs["points"].publish(out.points)
        if "detections" in pubs:
            pubs["detections"].publish(outputs.detections_msg(results, header))
        if "masks" in pubs:
            pubs["masks"].publish(masks)
        return out

    def _keep_encoding(self, frame: Frame, predictor: Any) -> None:
        """Remember ``frame``'s encoding; only the newest ENCODED_FRAMES keep theirs (memory)."""
        frame.encoded = (predictor, predictor.image_state())
        self._encoded.append(frame)
        while len(self._encoded) > ENCODED_FRAMES:
            self._encoded.popleft().encoded = None

    # ------------------------------------------------------------------ tracking, feedback, 3D
    def _track(self, results: list, job: Job, header: Any, s: NodeSettings) -> list[int]:
        config = s.tracker_config()
        if self._tracker.config != config:
            self._tracker.config = config
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
            key = ("prompt", self._persistent_generation, r.prompt_index) if job.persistent else None
            if r.prompt_index in detector_boxes:
                box, label = detector_boxes[r.prompt_index]
                x0, y0 = (max(0, int(round(v))) for v in box[:2])
                x1, y1 = (int(round(v)) for v in box[2:])
                mask = CroppedMask(np.ones((max(0, y1 - y0), max(0, x1 - x0)), bool), x0, y0)
            else:
                x0, y0, x1, y1 = r.box
                mask = CroppedMask(np.asarray(r.mask_crop, bool), x0, y0)  # no full-frame mask needed
                label = r.labels[0].class_index if r.labels else -1
            observations.append(Observation(mask, label, key))
        stamp = stamp_seconds(header)
        return self._tracker.update(observations, stamp if stamp > 0 else time.monotonic())

    def _with_feedback(self, prompts: list[Prompt], indices: list[int], image_hw: tuple[int, int]) -> list[Prompt]:
        """Persistent prompts with their previous low-res mask as mask_input (same prompts and frame size)."""
        if self._feedback_key != (self._persistent_generation, image_hw):
            return prompts
        return [dataclasses.replace(p, mask_input=self._feedback[i]) if i in self._feedback else p
                for p, i in zip(prompts, indices)]

    def _remember_feedback(self, results: list, image_hw: tuple[int, int], s: NodeSettings) -> None:
        if not s.prompt_mask_feedback:
            self._feedback = {}
            return
        self._feedback_key = (self._persistent_generation, image_hw)
        self._feedback = {r.prompt_index: r.low_res_logits for r in results if r.low_res_logits is not None}

    def _frame_3d(self, results: list, header: Any, image_hw: tuple[int, int], s: NodeSettings,
                  extras: Any) -> Optional[list]:
        """Per-instance 3D from the depth image stamped like this frame; None (and a counted, logged
        reason in ``extras.position_status``) when it cannot be done. Never raises: 3D is optional."""
        if not self._depth_seen:
            return None  # no depth stream: nothing asked for, nothing to report
        try:
            depth_msg = self._depth_for(header, s)
            info = self._camera_info
            if info is None:
                raise DepthError("no CameraInfo received on depth/camera_info")
            intrinsics = Intrinsics.from_camera_info(info)
            depth = depth_to_metres(image_to_numpy(depth_msg), depth_msg.encoding)
            check_pairing(depth.shape, image_hw, intrinsics)
            if not np.isfinite(depth).any():
                raise DepthError("the depth image has no valid pixel (all 0 / NaN)")
            points = [backproject(r.mask, depth, intrinsics) for r in results]
            frame_id = depth_msg.header.frame_id or header.frame_id
            note = ""
            if s.target_frame and s.target_frame != frame_id:
                points, frame_id, note = self._to_target(points, frame_id, header, s.target_frame)
            extras.geometry = [instance_geometry(p) for p in points]
        except (DepthError, ImageConversionError, ValueError) as error:
            reason = _shorten(f"3D skipped: {error}")
            self.stats.count("depth_skipped", reason)
            self._warn_once_per("depth", reason)
            extras.position_status = reason
            return None
        extras.position_frame_id, extras.position_status = frame_id, note
        return points

    def _depth_for(self, header: Any, s: NodeSettings) -> Any:
        """The depth image paired with this frame by stamp (waits briefly for one still on its way)."""
        stamp, tolerance = header_stamp_ns(header), int(round(s.depth_tolerance * 1e9))
        deadline = time.monotonic() + DEPTH_WAIT
        while True:
            found = self._depths.find(stamp, "", tolerance, time.monotonic())
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
            self._warn_once_per("tf", note)
            return points, frame_id, note
        from rclpy.duration import Duration
        from rclpy.time import Time

        try:
            if self._tf_buffer is None:
                self._tf_buffer = tf2_ros.Buffer()
                self._tf_listener = tf2_ros.TransformListener(self._tf_buffer, self)
            tf = self._tf_buffer.lookup_transform(target, frame_id, Time.from_msg(header.stamp),
                                                  timeout=Duration(seconds=0.05)).transform
        except Exception as error:  # tf2 lookup/extrapolation/connectivity errors
            note = f"no transform {frame_id!r} -> {target!r} ({type(error).__name__}); 3D is in {frame_id!r}"
            self._warn_once_per("tf", note)
            return points, frame_id, note
        t, q = tf.translation, tf.rotation
        moved = [transform_points(p, (t.x, t.y, t.z), (q.x, q.y, q.z, q.w)) for p in points]
        return moved, target, ""

    # ------------------------------------------------------------------ services
    def _on_set_vocabulary(self, request: Any, response: Any) -> Any:
        spec: Any = [c for c in request.classes if c.strip()] if request.classes else request.vocabulary.strip()
        predictor = self.predictor
        response.success = False
        if predictor is None:
            response.message = "node is not configured (no model loaded)"
            return response
        if not spec:
            response.message = "empty vocabulary: give 'vocabulary' (coco, lvis, a path, 'cup, door') or 'classes'"
            return response
        t0 = time.perf_counter()
        try:
            if isinstance(spec, str):  # files only from the allowed directories, checked unread
                spec = resolve_request(spec, allowed_dirs(self.settings.vocabulary_dirs))
            text = encode_vocabulary_text(predictor, spec)  # slow part, outside the lock
        except Exception as error:
            response.message = _shorten(f"could not load vocabulary: {type(error).__name__}: {error}")
            self.get_logger().warning(response.message)
            return response
        with self._predictor_lock:
            if self.predictor is not predictor:
                response.message = "the model was unloaded while the vocabulary was encoded"
                return response
            predictor.set_vocabulary(text)
            self._vocab_version = outputs.vocabulary_version(predictor)
        vocab = predictor.vocabulary
        response.success = True
        response.num_classes = len(vocab)
        response.vocabulary_name, response.vocabulary_version = vocab.name, self._vocab_version
        response.message = f"{len(vocab)} classes encoded in {time.perf_counter() - t0:.1f} s"
        self.get_logger().info(f"vocabulary {vocab.name!r}: {response.message}")
        return response

    def _on_segment(self, request: Any, response: Any) -> Any:
        response.success = False
        s = self.settings
        mode = request.mode.strip() or ("prompt" if request.prompts else "everything")
        try:
            if not self._active or self.predictor is None:
                raise ValueError(f"node is {self.state_label}, not active")
            if mode not in MODES:
                raise ValueError(f"mode must be one of {', '.join(MODES)} or empty; got {request.mode!r}")
            rgb = decode_frame(request.image, False)
            image_hw = (int(rgb.shape[0]), int(rgb.shape[1]))
            job = Job(mode)
            if mode == "prompt":
                job.prompts = [prompt_from_msg(p) for p in request.prompts]
                for i, prompt in enumerate(job.prompts):
                    check_prompt(prompt, image_hw, i)
                job.indices = list(range(len(job.prompts)))
            elif mode == "text":
                if not request.text.strip():
                    raise ValueError("mode 'text' needs a non-empty 'text'")
                job.text = TextRequest(request.text.strip())
            with self._predictor_lock:  # waits for the frame in progress, at most
                predictor = self.predictor
                if predictor is None:
                    raise ValueError("the model was unloaded")
                predictor.top_k = s.top_k
                results: list = []
                if job.mode != "prompt" or job.prompts:
                    predictor.set_image(rgb)
                    results = self._run_job(predictor, job, s, StageClock())
                vocab = predictor.vocabulary
        except (ValueError, PromptError, ImageConversionError) as error:
            response.message = _shorten(str(error))
            self.get_logger().warning(f"segment request rejected: {error}")
            return response
        response.result = outputs.labeled_mask_array(
            results, request.image.header, image_hw, mode=mode, query=request.text.strip() if mode == "text" else "",
            vocabulary_name=vocab.name if vocab else "", vocabulary_version=self._vocab_version)
        response.success, response.message = True, f"{len(results)} instance(s)"
        return response

    # ------------------------------------------------------------------ diagnostics
    def _on_diagnostics_tick(self) -> None:
        period = self.settings.diagnostics_period
        now = time.monotonic()
        if period > 0 and now - self._last_diag >= period:
            self._last_diag = now
            self.publish_diagnostics()
        if self._active and now - self._last_log >= max(30.0, 10 * period):
            self._last_log = now
            self.get_logger().info(summary_line(self.stats.snapshot()))

    def input_silence(self) -> Optional[str]:
        """Why the input looks dead (active, and no image for ``input_timeout`` s); None if it does not."""
        timeout = self.settings.input_timeout
        silent = time.monotonic() - self._last_input
        if not self._active or timeout <= 0 or silent < timeout:
            return None
        return (f"no image on {self._image_topic} for {silent:.0f} s (input_timeout {timeout:g} s): check the camera "
                f"topic/remap, image_transport ({self.settings.image_transport}) and input_reliability "
                f"({self.settings.input_reliability})")

    def publish_diagnostics(self) -> Any:
        snap = self.stats.snapshot()
        predictor = self.predictor
        state = self.state_label
        extra = [("mode", self.settings.mode), ("image_transport", self.settings.image_transport)]
        if self._image_topic:
            extra.append(("image_topic", self._image_topic))
        if predictor is not None:
            vocab = predictor.vocabulary
            extra += [("model", self.settings.model), ("device", str(predictor.device)),
                      ("precision", predictor.precision), ("trained", str(predictor.trained).lower()),
                      ("vocabulary", f"{vocab.name} ({len(vocab)} classes)" if vocab else "")]
        # A failed configure leaves the node unconfigured with a reason: that is an ERROR until fixed.
        error = self.last_error if state == "unconfigured" else ""
        array = diagnostic_array(snap, name=f"{self.get_name()}: ovsam", stamp=self.get_clock().now().to_msg(),
                                 state=state, extra=extra, previous=self._last_diag_snapshot, error=error,
                                 stale=self.input_silence())
        self._last_diag_snapshot = snap
        self._diag_pub.publish(array)
        return array

    def _warn_once_per(self, key: str, message: str, period: float = 10.0, force: bool = False) -> None:
        """Log ``message`` now if it is new for ``key``; a repeated one at most every ``period`` s."""
        now = time.monotonic()
        last = self._last_warnings.get(key)
        if force or last is None or last[0] != message or now - last[1] >= period:
            repeats = f" (and {last[2]} more like it)" if last and last[0] == message and last[2] else ""
            self.get_logger().warning(message + repeats)
            self._last_warnings[key] = (message, now, 0)
        else:
            self._last_warnings[key] = (last[0], last[1], last[2] + 1)

    def _explain_empty_everything(self, predictor: Any, results: list) -> None:
        """Everything mode kept nothing from its candidates: say which threshold removed what
        (a weakly trained model fails SAM's defaults), at most once per period, and count it."""
        report = getattr(predictor, "last_everything_report", None)
        if results or report is None or not report.candidates:
            return
        reason = report.explain()
        self.stats.count("everything_empty")
        self._warn_once_per("everything", reason + "; lower the parameter that removed most")

    @staticmethod
    def _apply_threads(num_threads: int) -> None:
        import torch

        if num_threads > 0 and torch.get_num_threads() != num_threads:
            torch.set_num_threads(num_threads)


def _shorten(text: str, limit: int = 500) -> str:
    """Error messages may quote a 10k-name vocabulary: keep logs and responses readable."""
    return text if len(text) <= limit else text[: limit - 20] + f"... ({len(text)} chars)"


# ----------------------------------------------------------------------------- entry point
def run(args: argparse.Namespace, rcl_args: Sequence[str], params_files: Sequence[str]) -> int:
    """Start the node for parsed ``ovsam-node`` arguments (the parser: :mod:`ovsam_ros.ros.node_cli`).

    ``rcl_args``: the ``--ros-args`` block for rclpy; ``params_files``: every parameters file in it.
    """
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

    try:
        sections = {path: read_params_file(path) for path in params_files}
    except ParamsFileError as error:
        print(f"ovsam-node: error: {error}", file=sys.stderr)
        return 2
    try:
        rclpy.init(args=["ovsam-node", *rcl_args])
        node = OVSAMNode(args.name, namespace=args.namespace or None)
    except Exception as error:  # rcl argument errors: one line, not a traceback
        if type(error).__name__ != "RCLError" and not isinstance(error, ValueError):
            raise
        print(f"ovsam-node: error: {error}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    # Checked against the name the node got: `ros2 launch` sets namespace and name as __ns / __node
    # remaps, which --name / --namespace never see.
    for path, keys in sections.items():
        warning = section_warning(path, keys, node.get_fully_qualified_name())
        if warning:
            node.get_logger().warning(warning)
    executor = MultiThreadedExecutor(num_threads=max(2, args.threads))
    executor.add_node(node)
    try:
        if not args.no_autostart:
            node.autostart()
        print(f"ovsam-node ready ({node.state_label})", flush=True)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.stop_worker()
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
