"""The OVSAM perception node: camera frames + prompts in, named instance masks out.

Lifecycle (``rclpy.lifecycle``): *configure* loads the model and creates the
topics/services, *activate* starts the worker and enables the publishers,
*deactivate* stops both, *cleanup* frees the model. ``ovsam-node`` configures
and activates by itself unless ``--no-autostart``.

This module is the lifecycle shell: parameters, transitions, topics and services,
diagnostics. What happens to a frame (the worker thread, job selection, inference,
tracking, publishing and its order) is :mod:`ovsam_ros.ros.frame_pipeline`.

Threads: the image callbacks only store the newest frame (a pending frame that
is replaced counts as dropped); one worker thread (never more) runs inference on
the newest frame; prompt, text and service callbacks run on a MultiThreadedExecutor
in their own callback groups and never wait behind inference, except the
``segment`` service, which needs the model and waits for the current frame.
*deactivate* returns without waiting for a frame in flight (its result is dropped),
only for a publish under way; *cleanup* waits for the inference in flight before it
frees the model.

What a frame is used for, first match wins: one-shot prompts, a one-shot text
query, persistent prompts, a persistent text query, then parameter ``mode``
(``everything``; ``text`` with parameter ``query``; ``prompt`` = nothing to do).

Bounds on what one message can cause (anyone on the DDS domain can send one): at
most ``max_prompts`` prompts per PromptArray / detection message / segment request
and ``max_prompt_points`` points per prompt (the excess is rejected, counted in
``prompts_over_limit``, with a warning); files only from ``vocabulary_dirs`` /
``model_dirs`` for the ``vocabulary`` / ``model`` parameters and ``set_vocabulary``.

Topics (inputs from other nodes relative, so namespaces and remaps work; the rest under the node):

===========================  ====  ==========================================
``image``                    sub   sensor_msgs/Image (``image_transport: raw``)
``image/compressed``         sub   sensor_msgs/CompressedImage (``image_transport: compressed``)
``~/prompts``                sub   ovsam_ros/PromptArray (reliable, transient-local)
``~/text_query``             sub   ovsam_ros/TextQuery (reliable, transient-local)
``detection_prompts``        sub   vision_msgs/Detection2DArray (if vision_msgs is installed)
``depth/image``              sub   sensor_msgs/Image 16UC1 (mm) / 32FC1 (m), aligned to ``image``
``depth/camera_info``        sub   sensor_msgs/CameraInfo of the depth image
``~/masks``                  pub   ovsam_ros/LabeledMaskArray (header = the image's; ``mask_encoding``)
``~/instance_ids``           pub   sensor_msgs/Image mono16, pixel = instance_id + 1 (``publish_instance_ids``,
                                   ``instance_ids_format: raw``)
``~/instance_ids/compressed``  pub  sensor_msgs/CompressedImage, the same as a 16-bit PNG (``instance_ids_format: png``)
``~/overlay``                pub   sensor_msgs/Image rgb8 (``publish_overlay``)
``~/detections``             pub   vision_msgs/Detection2DArray, id = track id (if vision_msgs is installed)
``~/detections_3d``          pub   vision_msgs/Detection3DArray in the 3D frame (vision_msgs; frames with depth)
``~/label_info``             pub   vision_msgs/LabelInfo class index -> name (vision_msgs; latched)
``~/markers``                pub   visualization_msgs/MarkerArray, 3D boxes + labels (``publish_markers``)
``~/points``                 pub   sensor_msgs/PointCloud2 (``publish_points``)
``/diagnostics``             pub   diagnostic_msgs/DiagnosticArray (every lifecycle state)
``~/set_vocabulary``         srv   ovsam_ros/SetVocabulary
``~/segment``                srv   ovsam_ros/Segment
``~/clear_prompts``          srv   std_srvs/Trigger
===========================  ====  ==========================================

Camera QoS (``input_reliability``, ``input_depth``) and output QoS (``output_reliability``)
are parameters (ovsam_ros.ros.qos).

Camera images: the value range follows the encoding, never the pixels: 16-bit encodings hold
``input_bits`` bits (12 for a 12-bit camera in mono16), 32FC1 is 0..``float_max``; a frame using
under 1/16 of its range is converted and warned about (rate-limited per topic).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import sys
import threading
import time
from typing import Any, Optional, Sequence

import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from ovsam_ros.image_input import RangeWarnings
from ovsam_ros.prompts import PromptError, check_prompt
from ovsam_ros.robot.detections import prompts_from_detections
from ovsam_ros.robot.frame_buffer import header_stamp_ns
from ovsam_ros.ros import outputs
from ovsam_ros.ros.diagnostics import NodeStats, StageClock, diagnostic_array, summary_line
from ovsam_ros.ros.frame_pipeline import FrameOutput, FramePipeline, Job, TextRequest
from ovsam_ros.ros.frames import Frame, decode_frame, stamp_seconds
from ovsam_ros.ros.image_conversion import ImageConversionError
from ovsam_ros.ros.model_access import allowed_model_dirs, resolve_model_request
from ovsam_ros.ros.param_checks import ParamsFileError, read_params_file, section_warning, unknown_parameters
from ovsam_ros.ros.parameters import CONFIGURE_TIME, MODES, PARAMETERS, SPECS, NodeSettings, descriptor, validate
from ovsam_ros.ros.prompt_input import PromptSet, check_limits, limited_prompt_set, prompt_from_msg
from ovsam_ros.ros.qos import (COMMAND_QOS, DEPTH_QOS, DETECTION_QOS, DIAGNOSTICS_QOS,  # noqa: F401 (re-exported)
                               LABEL_INFO_QOS, OUTPUT_QOS, SENSOR_QOS, incompatible_qos_callbacks, input_qos,
                               output_qos)
from ovsam_ros.ros.vocabulary_access import allowed_dirs, parameter_spec, resolve_request


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
        self.predictor_lock = threading.Lock()  # the predictor holds one image: one user at a time
        self._predictor_lock = self.predictor_lock  # the name tests and tools know
        self._active = False
        self.vocab_version = ""
        self.publishers_by_name: dict[str, Any] = {}  # output name -> lifecycle publisher
        self._owned_entities: list[tuple[str, Any]] = []
        self._last_diag = 0.0
        self._last_diag_snapshot: Optional[dict] = None
        self._last_log = time.monotonic()
        self._last_warnings: dict[str, tuple[str, float, int]] = {}
        # Mis-scaled camera frames (a 12-bit camera read as 16-bit): one warning per source per 30 s.
        self.range_warnings = RangeWarnings(period=30.0, emit=self.get_logger().warning)
        self._frame_seq = itertools.count(1)  # arrival order of camera frames
        self.pipeline = FramePipeline(self)
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
        for spec in PARAMETERS:  # after all are declared: vocabulary / model need their *_dirs
            reason = None if spec.name in self.param_errors else self._check_value(spec.name, values[spec.name], values)
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
        current = dataclasses.asdict(self.settings)
        for param in params:
            if param.name not in SPECS:
                continue
            reason = self._check_value(param.name, param.value, current)
            if reason is None and param.name in CONFIGURE_TIME and self.predictor is not None:
                reason = f"{param.name} is read when the node is configured; run the cleanup transition first"
            if reason:
                return SetParametersResult(successful=False, reason=reason)
            changes[param.name] = float(param.value) if SPECS[param.name].type is float else param.value
        self.settings = dataclasses.replace(self.settings, **changes)
        for name in changes:
            self.param_errors.pop(name, None)
        return SetParametersResult(successful=True)

    @staticmethod
    def _check_value(name: str, value: Any, values: dict[str, Any]) -> Optional[str]:
        """Why ``value`` cannot be used for parameter ``name`` (None: it can). ``vocabulary`` and
        ``model`` name files: checked against the allow-lists first, unread (``values`` gives the
        read-only *_dirs); a model file that does not exist yet is left to configure."""
        if name == "vocabulary" and isinstance(value, str):
            try:
                parameter_spec(value, allowed_dirs(values.get("vocabulary_dirs", "")))
            except (ValueError, OSError) as error:  # refused, not found, unknown name
                return f"vocabulary: {error}"
            return None  # the allow-list check covers what validate() would stat
        reason = validate(name, value)
        if reason is None and name == "model" and isinstance(value, str):
            try:
                resolve_model_request(value, allowed_model_dirs(values.get("model_dirs", "")))
            except FileNotFoundError:
                pass  # may be copied there before configure, which says so if not
            except (ValueError, OSError) as error:
                return f"model: {error}"
        return reason

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.param_errors:
            return self._fail("configure", "; ".join(self.param_errors.values()))
        s = self.settings
        _apply_threads(s.num_threads)
        try:  # files only through the allow-lists, resolved again now (the disk may have changed)
            model = resolve_model_request(s.model, allowed_model_dirs(s.model_dirs))
            vocabulary = parameter_spec(s.vocabulary, allowed_dirs(s.vocabulary_dirs))
        except (ValueError, OSError) as error:
            return self._fail("configure", _shorten(str(error)))
        try:
            from ovsam_ros.loading import build_predictor

            t0 = time.perf_counter()
            predictor = build_predictor(model, vocabulary=vocabulary or None, device=s.device or None,
                                        precision=s.precision or None, top_k=s.top_k,
                                        clip_ensemble={"on": True, "off": False}.get(s.clip_ensemble),
                                        compile=s.compile or None,
                                        synonyms=s.synonyms or None)
        except Exception as error:  # a missing checkpoint, bad YAML, no CUDA, ...
            return self._fail("configure", f"could not load model {s.model!r}: {type(error).__name__}: {error}")
        self.predictor = predictor
        self.vocab_version = outputs.vocabulary_version(predictor)
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
        result = super().on_activate(state)  # enables the lifecycle publishers, before anything can publish
        self.publish_label_info()
        self.pipeline.reset_markers(self.get_clock().now().to_msg())  # an earlier activation's tracks are gone
        self.pipeline.start(worker=self._start_worker)  # reuses a worker still finishing an old frame
        self._active = True
        self.get_logger().info(f"active: mode {self.settings.mode!r}, waiting for {self.settings.image_transport} "
                               f"images on {self._image_topic}")
        return result

    def publish_label_info(self) -> Any:
        """~/label_info (latched): the active vocabulary's class index -> name; the message, or None
        (no vision_msgs, no model, or more classes than LabelInfo's uint16 ids hold: warned)."""
        predictor, pub = self.predictor, self.publishers_by_name.get("label_info")
        if predictor is None or pub is None:
            return None
        from std_msgs.msg import Header

        vocab = predictor.vocabulary
        try:
            msg = outputs.label_info_msg(vocab.classes if vocab else [], Header(stamp=self.get_clock().now().to_msg()))
        except ValueError as error:
            self.get_logger().warning(f"~/label_info not published: {error}")
            return None
        if msg is not None:
            pub.publish(msg)  # dropped while inactive; on_activate publishes it again
        return msg

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        # Prompt: waits for a publish under way (ms), not for the inference in flight, whose result
        # is dropped when it finishes. After this line nothing is published.
        self._active = False
        self.pipeline.pause()
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
    def image_topic(self) -> str:
        """The camera topic subscribed to (resolved); '' before configure."""
        return self._image_topic

    @property
    def state_label(self) -> str:
        return self._state_machine.current_state[1]

    def stop_worker(self, timeout: float = 5.0) -> None:
        """Stop publishing and the worker thread (node shutdown, process exit); joins it for up to
        ``timeout`` s. A frame still in flight after that is never published."""
        self._active = False
        self.pipeline.shutdown(timeout)

    def _release(self) -> None:
        self._destroy_interfaces()
        # Waits for the inference in flight: the model is freed, not loaded twice (GPU memory).
        with self.predictor_lock:
            device = getattr(self.predictor, "device", None)
            self.predictor = None
            self.pipeline.release()
        gc.collect()
        if device is not None and device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ interfaces
    def _create_interfaces(self) -> None:
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
        from std_srvs.srv import Trigger
        from visualization_msgs.msg import MarkerArray

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
            # image_transport's name for the compressed form of ~/instance_ids (republish, rqt find it)
            "instance_ids_png": self.create_lifecycle_publisher(CompressedImage, "~/instance_ids/compressed",
                                                                out_qos),
            "overlay": self.create_lifecycle_publisher(Image, "~/overlay", out_qos),
            "points": self.create_lifecycle_publisher(PointCloud2, "~/points", out_qos),
            "markers": self.create_lifecycle_publisher(MarkerArray, "~/markers", out_qos),
        }
        if outputs.Detection2DArray is not None:
            pubs["detections"] = self.create_lifecycle_publisher(outputs.Detection2DArray, "~/detections", out_qos)
            pubs["detections_3d"] = self.create_lifecycle_publisher(outputs.Detection3DArray, "~/detections_3d",
                                                                    out_qos)
            pubs["label_info"] = self.create_lifecycle_publisher(outputs.LabelInfo, "~/label_info", LABEL_INFO_QOS)
        self.publishers_by_name = pubs
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
        pubs, self.publishers_by_name = self.publishers_by_name, {}
        for pub in pubs.values():
            self.destroy_lifecycle_publisher(pub)

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
        self.pipeline.receive(Frame(msg, compressed, time.monotonic(), seq=next(self._frame_seq)))

    def _on_depth(self, msg: Any) -> None:
        if not self._active:
            return
        self.pipeline.receive_depth(msg)

    def _on_camera_info(self, msg: Any) -> None:
        self.pipeline.camera_info = msg

    def _over_limit(self, reasons: list[str], over: int) -> None:
        """Prompts past max_prompts / max_prompt_points: counted, one warning per message (rate-limited)."""
        if not over:
            return
        self.stats.count("prompts_rejected", reasons[-1], n=over)
        self.stats.count("prompts_over_limit", n=over)
        self._warn_once_per("prompt_limit", "; ".join(reasons))

    def on_detections(self, msg: Any) -> None:
        """``vision_msgs/Detection2DArray`` (or anything shaped like it): one prompt per detection."""
        s = self.settings
        converted = prompts_from_detections(msg, s.detection_prompt_type, s.detection_min_score)
        if converted.rejected:
            self.stats.count("prompts_rejected", converted.rejected[-1], n=len(converted.rejected))
            for reason in converted.rejected:
                self._warn_once_per("detection", f"detection rejected: {reason}")
        # One prompt per detection: max_prompt_points cannot be exceeded, max_prompts can.
        check = check_limits([0] * min(len(converted.prompts), s.max_prompts), len(converted.prompts),
                             s.max_prompts, None, what="detection_prompts message")
        self._over_limit(check.reasons, check.over)
        keep = check.keep
        if not keep:
            return
        self._accept_oneshot(PromptSet([converted.prompts[i] for i in keep], (0, 0), msg.header.frame_id, False,
                                       stamp=header_stamp_ns(msg.header),
                                       sources=[converted.sources[i] for i in keep],
                                       indices=[converted.indices[i] for i in keep]))

    def _accept_oneshot(self, prompt_set: PromptSet) -> None:
        """One-shot prompts: stamped ones wait for their frame, unstamped ones take the next frame."""
        self.pipeline.accept_oneshot(prompt_set)

    def _on_prompts(self, msg: Any) -> None:
        s = self.settings
        prompt_set, check = limited_prompt_set(msg, s.max_prompts, s.max_prompt_points)
        self._over_limit(check.reasons, check.over)
        if not prompt_set.persistent:
            if prompt_set.prompts:
                self._accept_oneshot(prompt_set)
        else:  # an empty persistent array (or one with no prompt within the limits) clears them
            self.pipeline.set_persistent(prompt_set if prompt_set.prompts else None)
        kind = "persistent" if prompt_set.persistent else "one-shot"
        self.get_logger().debug(f"{len(prompt_set.prompts)} {kind} prompt(s) for "
                                f"{prompt_set.source_size[0]}x{prompt_set.source_size[1]}")

    @property
    def _persistent_prompts(self) -> Optional[PromptSet]:
        return self.pipeline.board.persistent

    def _on_text_query(self, msg: Any) -> None:
        text = msg.text.strip()  # empty text clears the query
        request = TextRequest(text, int(msg.max_instances), float(msg.min_score)) if text else None
        problem = request.problem() if request is not None else None
        if problem:  # refused whole: a query already set stays
            self.stats.count("prompts_rejected", problem)
            self._warn_once_per("text_query", f"text query rejected: {problem}")
            return
        self.pipeline.set_query(request, bool(msg.persistent))

    def _on_clear_prompts(self, request: Any, response: Any) -> Any:
        cleared = self.pipeline.board.clear()
        response.success, response.message = True, f"cleared {cleared} prompt set(s)/quer(ies)"
        return response

    # ------------------------------------------------------------------ frames (the pipeline's)
    def process_frame(self, frame: Frame, prompt_set: Optional[PromptSet] = None) -> Optional[FrameOutput]:
        """Decode, infer, publish one frame (:meth:`FramePipeline.process_frame`); the worker calls
        this method, so tools and tests can wrap it."""
        return self.pipeline.process_frame(frame, prompt_set)

    def process_pending(self) -> Optional[FrameOutput]:
        """Serve due stamped prompts and the pending frame now, in this thread (tests and tools
        without the worker); the last output produced, or None."""
        return self.pipeline.process_pending()

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
            self.vocab_version = outputs.vocabulary_version(predictor)
        self.publish_label_info()  # latched: late subscribers get the new map
        vocab = predictor.vocabulary
        response.success = True
        response.num_classes = len(vocab)
        response.vocabulary_name, response.vocabulary_version = vocab.name, self.vocab_version
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
            rgb = decode_frame(request.image, False, input_bits=s.input_bits, float_max=s.float_max,
                               source="segment service", warn=self.range_warnings)
            image_hw = (int(rgb.shape[0]), int(rgb.shape[1]))
            job = Job(mode)
            if mode == "prompt":
                check = check_limits([len(p.points) for p in request.prompts[:s.max_prompts]], len(request.prompts),
                                     s.max_prompts, s.max_prompt_points, what="segment request")
                if check.over:  # a service answers its caller: refused whole, with the reason
                    self.stats.count("prompts_over_limit", n=check.over)
                    raise ValueError(f"refused: {check.message}")
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
                    results = self.pipeline.run_job(predictor, job, s, StageClock())
                vocab = predictor.vocabulary
        except (ValueError, PromptError, ImageConversionError) as error:
            response.message = _shorten(str(error))
            self.get_logger().warning(f"segment request rejected: {error}")
            return response
        response.result = outputs.labeled_mask_array(
            results, request.image.header, image_hw, mode=mode, query=request.text.strip() if mode == "text" else "",
            vocabulary_name=vocab.name if vocab else "", vocabulary_version=self.vocab_version,
            mask_encoding=s.mask_encoding)
        response.success, response.message = True, f"{len(results)} instance(s)"
        return response

    # ------------------------------------------------------------------ diagnostics
    def _on_diagnostics_tick(self) -> None:
        period = self.settings.diagnostics_period
        now = time.monotonic()
        self.pipeline.expire(now)  # a burst leaves memory after frame_buffer_max_age, with no new frame
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
        frames = self.pipeline.frames
        extra += [("frame_buffer_frames", str(len(frames))), ("frame_buffer_bytes", str(frames.nbytes))]
        depths = self.pipeline.depths
        if self.pipeline.depth_seen:
            extra += [("depth_buffer_images", str(len(depths))), ("depth_buffer_bytes", str(depths.nbytes))]
        if predictor is not None:
            vocab = predictor.vocabulary
            extra += [("model", self.settings.model), ("device", str(predictor.device)),
                      ("precision", predictor.precision), ("trained", str(predictor.trained).lower()),
                      ("vocabulary", f"{vocab.name} ({len(vocab)} classes)" if vocab else "")]
        # A failed configure leaves the node unconfigured with a reason: that is an ERROR until fixed.
        error = self.last_error if state == "unconfigured" else ""
        # The fully qualified name (diagnostic_updater's use_fqn): /front/ovsam and /rear/ovsam stay two entries.
        array = diagnostic_array(snap, name=f"{self.get_fully_qualified_name()}: ovsam", stamp=self.get_clock().now().to_msg(),
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

    warn_once_per = _warn_once_per  # what the frame pipeline calls


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
