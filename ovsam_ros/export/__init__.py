"""Deployment: ONNX export of OVSAM, an ONNX Runtime backend for the predictor, PyTorch speed switches.

* :func:`ovsam_ros.export.onnx_export.export_onnx` writes ``image_encoder.onnx`` +
  ``decoder.onnx`` (+ ``decoder_multimask.onnx``) + ``manifest.json`` (+ the CLIP
  text tower as ``text_tower.pt``) into one folder (``ovsam export``), written whole or not at
  all and checked when loaded (:mod:`ovsam_ros.export.folder`: temporary sibling + rename, the
  manifest's sha256 of every file, a folder an export did not write is refused).
* :class:`ovsam_ros.export.backend.OnnxOVSAM` runs those graphs with ONNX Runtime
  (CPU, CUDA or TensorRT execution providers) behind the same interface as
  :class:`~ovsam_ros.model.OVSAM`, so :class:`~ovsam_ros.predictor.OVSAMPredictor`
  and the ROS node use it unchanged; select it in a model YAML with
  ``model: {backend: onnx, onnx_dir: ...}``.
* :func:`ovsam_ros.export.torch_runtime.optimize_for_inference`: channels-last and
  ``torch.compile`` for the PyTorch path on GPUs.

See ``docs/jetson.md``.
"""
