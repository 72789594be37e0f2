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

Topics (relative, so namespaces and remaps work):

=====================  ====  ==========================================
``image``              sub   sensor_msgs/Image (sensor-data QoS, depth 1)
``image/compressed``   sub   sensor_msgs/CompressedImage (same)
``prompts``            sub   ovsam_ros/PromptArray
``text_query``         sub   ovsam_ros/TextQuery
``~/masks``            pub   ovsam_ros/LabeledMaskArray (header = the image's)
``~/instance_ids``     pub   sensor_msgs/Image mono16, pixel = instance_id + 1
``~/overlay``          pub   sensor_msgs/Image rgb8 (``publish_overlay``)
``~/detections``       pub   vision_msgs/Detection2DArray (if vision_msgs is installed)
``/diagnostics``       pub   diagnostic_msgs/DiagnosticArray
``set_vocabulary``     srv   ovsam_ros/SetVocabulary
``segment``            srv   ovsam_ros/Segment
``clear_prompts``      srv   std_srvs/Trigger
=====================  ====  ==========================================
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from ovsam_ros.prompts import Prompt, PromptError, check_prompt
from ovsam_ros.ros import outputs
from ovsam_ros.ros.diagnostics import NodeStats, StageClock, diagnostic_array, summary_line
from ovsam_ros.ros.frames import Frame, LatestFrameSlot, decode_frame, stamp_seconds, stamp_tuple
from ovsam_ros.ros.image_conversion import ImageConversionError
from ovsam_ros.ros.param_checks import ParamsFileError, check_params_file, unknown_parameters
from ovsam_ros.ros.parameters import CONFIGURE_TIME, MODES, PARAMETERS, SPECS, NodeSettings, descriptor, validate
from ovsam_ros.ros.prompt_input import PromptSet, fit_prompts, prompt_from_msg, prompt_set_from_msg
from ovsam_ros.ros.vocabulary_access import allowed_dirs, resolve_request

# Cameras: newest frame only, never a queue of stale ones.
SENSOR_QOS = QoSProfile(reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST, depth=1,
                        durability=DurabilityPolicy.VOLATILE)
# Prompts are commands: reliable, a few may queue.
COMMAND_QOS = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=10)
OUTPUT_QOS = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=5)


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


@dataclass
class FrameOutput:
    """What one processed frame produced (returned by :meth:`OVSAMNode.process_frame` for tests/tools)."""

    mode: str
    masks: Any  # LabeledMaskArray
    instance_ids: Any = None
    overlay: Any = None
    stages: dict[str, float] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)


def encode_vocabulary_text(predictor: Any, spec: Any):
    """Load and encode a vocabulary WITHOUT touching the predictor's state.

    Runs outside the predictor lock so frames keep flowing while a large
    vocabulary (10k+ names) is encoded; the result is swapped in under the lock
    with ``predictor.set_vocabulary(embeddings)``. Shares the predictor's
    on-disk text cache.
    """
    from ovsam_ros.model.vocabulary import load_vocabulary

    return predictor.encode_vocabulary(load_vocabulary(spec), progress=False)


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
                                        precision=s.precision or None, top_k=s.top_k)
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
        self._stop.clear()
        self._slot.reopen()
        self._active = True
        if self._start_worker:
            self._worker = threading.Thread(target=self._worker_loop, name="ovsam-worker", daemon=True)
            self._worker.start()
        self.get_logger().info(f"active: mode {self.settings.mode!r}, waiting for images on "
                               f"{self.resolve_topic_name('image')}")
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
        gc.collect()
        if device is not None and device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ interfaces
    def _create_interfaces(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import CompressedImage, Image
        from std_srvs.srv import Trigger

        from ovsam_ros.msg import LabeledMaskArray, PromptArray, TextQuery
        from ovsam_ros.srv import Segment, SetVocabulary

        images, commands = MutuallyExclusiveCallbackGroup(), MutuallyExclusiveCallbackGroup()
        vocab_group, segment_group = MutuallyExclusiveCallbackGroup(), MutuallyExclusiveCallbackGroup()
        timers = MutuallyExclusiveCallbackGroup()
        pubs = {
            "masks": self.create_lifecycle_publisher(LabeledMaskArray, "~/masks", OUTPUT_QOS),
            "instance_ids": self.create_lifecycle_publisher(Image, "~/instance_ids", OUTPUT_QOS),
            "overlay": self.create_lifecycle_publisher(Image, "~/overlay", OUTPUT_QOS),
            "diagnostics": self.create_lifecycle_publisher(DiagnosticArray, "/diagnostics", OUTPUT_QOS),
        }
        if outputs.Detection2DArray is not None:
            pubs["detections"] = self.create_lifecycle_publisher(outputs.Detection2DArray, "~/detections", OUTPUT_QOS)
        self._out_pubs = pubs
        self._owned_entities = [
            ("sub", self.create_subscription(Image, "image", self._on_image, SENSOR_QOS, callback_group=images)),
            ("sub", self.create_subscription(CompressedImage, "image/compressed", self._on_compressed, SENSOR_QOS,
                                             callback_group=images)),
            ("sub", self.create_subscription(PromptArray, "prompts", self._on_prompts, COMMAND_QOS,
                                             callback_group=commands)),
            ("sub", self.create_subscription(TextQuery, "text_query", self._on_text_query, COMMAND_QOS,
                                             callback_group=commands)),
            ("srv", self.create_service(Trigger, "clear_prompts", self._on_clear_prompts, callback_group=commands)),
            ("srv", self.create_service(SetVocabulary, "set_vocabulary", self._on_set_vocabulary,
                                        callback_group=vocab_group)),
            ("srv", self.create_service(Segment, "segment", self._on_segment, callback_group=segment_group)),
            ("timer", self.create_timer(0.1, self._on_diagnostics_tick, callback_group=timers)),
        ]

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
        stamp = stamp_seconds(msg.header)
        age = None if stamp == 0.0 else self.get_clock().now().nanoseconds * 1e-9 - stamp
        if age is None:
            self.get_logger().warning("image with a zero timestamp: outputs will carry it unchanged",
                                      throttle_duration_sec=10.0)
        self.stats.received(age)
        if self._slot.put(Frame(msg, compressed, time.monotonic())):
            self.stats.dropped()

    def _on_prompts(self, msg: Any) -> None:
        prompt_set = prompt_set_from_msg(msg)
        with self._state_lock:
            if prompt_set.persistent:
                # An empty persistent array clears the persistent prompts.
                self._persistent_prompts = prompt_set if prompt_set.prompts else None
            elif prompt_set.prompts:
                self._oneshot_prompts = prompt_set
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
            self._oneshot_prompts = self._persistent_prompts = None
            self._oneshot_query = self._persistent_query = None
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
            if frame is None or self._stop.is_set():
                continue
            if rate > 0:
                next_allowed = time.monotonic() + 1.0 / rate
            try:
                self.process_frame(frame)
            except Exception as error:  # never let one frame kill the worker
                reason = _shorten(f"{type(error).__name__}: {error}")
                self.stats.count("frames_failed", reason)
                self.get_logger().error(f"frame failed: {reason}", throttle_duration_sec=5.0)

    def process_pending(self) -> Optional[FrameOutput]:
        """Process the pending frame now, in this thread (tests and tools without the worker)."""
        frame = self._slot.take(timeout=0)
        return None if frame is None else self.process_frame(frame)

    def process_frame(self, frame: Frame) -> Optional[FrameOutput]:
        """Decode, infer, publish one frame; None if it was unusable or there was nothing to do."""
        s = self.settings
        clock = StageClock()
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
        job = self._next_job(image_hw, header.frame_id, s)
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
                    predictor.set_image(rgb)
                results = self._run_job(predictor, job, s, clock)
            vocab = predictor.vocabulary
        with clock.stage("publish"):
            out = self._publish(results, header, image_hw, job, rgb, vocab.name if vocab else "", s)
        out.stages = clock.finish()
        now = self.get_clock().now().nanoseconds * 1e-9
        stamp = stamp_seconds(header)
        self.stats.processed(out.stages, stamp_tuple(header), None if stamp == 0.0 else now - stamp, len(results))
        return out

    def _next_job(self, image_hw: tuple[int, int], frame_id: str, s: NodeSettings) -> Optional[Job]:
        with self._state_lock:
            oneshot, self._oneshot_prompts = self._oneshot_prompts, None
            persistent = self._persistent_prompts
            query_once, self._oneshot_query = self._oneshot_query, None
            query = self._persistent_query
        prompt_set = oneshot if oneshot is not None else (None if query_once is not None else persistent)
        if prompt_set is not None:
            job = Job("prompt")
            if prompt_set.frame_id and frame_id and prompt_set.frame_id != frame_id:
                job.rejected.append(f"prompts were made for frame {prompt_set.frame_id!r}, the image is "
                                    f"{frame_id!r}: not applied")
            else:
                fitted = fit_prompts(prompt_set, image_hw)
                job.prompts, job.indices, job.rejected = fitted.prompts, fitted.indices, fitted.rejected
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
        else:
            # Candidates from everything mode (more than we return), then the phrase picks.
            candidates = predictor.everything(dataclasses.replace(options, max_instances=max(100, s.max_instances)))
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
        masks = outputs.labeled_mask_array(results, header, image_hw, mode=job.mode, query=query,
                                           vocabulary_name=vocabulary_name, vocabulary_version=self._vocab_version)
        out = FrameOutput(mode=job.mode, masks=masks, rejected=job.rejected)
        pubs = self._out_pubs
        # Auxiliary outputs first: a consumer that got ~/masks finds the rest already sent.
        if s.publish_instance_ids:
            out.instance_ids = outputs.instance_ids_msg(results, header, image_hw)
            if "instance_ids" in pubs:
                pubs["instance_ids"].publish(out.instance_ids)
        if s.publish_overlay:
            checked = [check_prompt(p, image_hw) for p in job.prompts]
            out.overlay = outputs.overlay_msg(rgb, results, header, checked)
            if "overlay" in pubs:
                pubs["overlay"].publish(out.overlay)
        if "detections" in pubs:
            pubs["detections"].publish(outputs.detections_msg(results, header))
        if "masks" in pubs:
            pubs["masks"].publish(masks)
        return out

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

    def publish_diagnostics(self) -> Any:
        snap = self.stats.snapshot()
        predictor = self.predictor
        extra = [("mode", self.settings.mode)]
        if predictor is not None:
            vocab = predictor.vocabulary
            extra += [("model", self.settings.model), ("device", str(predictor.device)),
                      ("precision", predictor.precision), ("trained", str(predictor.trained).lower()),
                      ("vocabulary", f"{vocab.name} ({len(vocab)} classes)" if vocab else "")]
        array = diagnostic_array(snap, name=f"{self.get_name()}: ovsam", stamp=self.get_clock().now().to_msg(),
                                 state=self.state_label, extra=extra, previous=self._last_diag_snapshot)
        self._last_diag_snapshot = snap
        pub = self._out_pubs.get("diagnostics")
        if pub is not None:
            pub.publish(array)
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

    @staticmethod
    def _apply_threads(num_threads: int) -> None:
        import torch

        if num_threads > 0 and torch.get_num_threads() != num_threads:
            torch.set_num_threads(num_threads)


def _shorten(text: str, limit: int = 500) -> str:
    """Error messages may quote a 10k-name vocabulary: keep logs and responses readable."""
    return text if len(text) <= limit else text[: limit - 20] + f"... ({len(text)} chars)"


# ----------------------------------------------------------------------------- entry point
def ros_environment_defaults() -> None:
    """Defaults for running from a plain venv: local-only discovery, ament index in this prefix."""
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)


def ros_args_for(params_files: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    """rclpy arguments: our --params-file options and the user's ROS arguments in one --ros-args block."""
    args = [part for path in params_files for part in ("--params-file", path)] + list(extra)
    return ["--ros-args", *args] if args else []


def _params_files_in(ros_args: Sequence[str]) -> list[str]:
    """The ``--params-file X`` values inside the user's ``--ros-args`` block."""
    return [ros_args[i + 1] for i, arg in enumerate(ros_args[:-1]) if arg == "--params-file"]


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ovsam-node",
        description="OVSAM perception node (lifecycle). Extra ROS arguments go after --ros-args "
                    "(remaps: --ros-args -r image:=/camera/image_raw; parameters: -p mode:=everything).")
    parser.add_argument("--params-file", action="append", default=[], metavar="YAML",
                        help="ROS parameters file (config/ovsam.yaml format); repeatable")
    parser.add_argument("--no-autostart", action="store_true",
                        help="stay unconfigured; drive the lifecycle with its services")
    parser.add_argument("--name", default="ovsam", help="node name (default: ovsam)")
    parser.add_argument("--namespace", default="", help="node namespace")
    parser.add_argument("--threads", type=int, default=4, help="executor threads for callbacks (default 4)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_extra: list[str] = []
    if "--ros-args" in argv:  # everything after it is for rclpy (remaps, -p, --log-level)
        cut = argv.index("--ros-args")
        argv, ros_extra = argv[:cut], argv[cut + 1:]
    args = build_arg_parser().parse_args(argv)
    ros_environment_defaults()
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] [%(name)s]: %(message)s")
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

    try:
        for path in [*args.params_file, *_params_files_in(ros_extra)]:
            for warning in check_params_file(path, args.name, args.namespace):
                logging.getLogger("ovsam-node").warning(warning)
    except ParamsFileError as error:
        print(f"ovsam-node: error: {error}", file=sys.stderr)
        return 2
    try:
        rclpy.init(args=["ovsam-node", *ros_args_for(args.params_file, ros_extra)])
        node = OVSAMNode(args.name, namespace=args.namespace or None)
    except Exception as error:  # rcl argument errors: one line, not a traceback
        if type(error).__name__ != "RCLError" and not isinstance(error, ValueError):
            raise
        print(f"ovsam-node: error: {error}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
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


if __name__ == "__main__":
    sys.exit(main())
