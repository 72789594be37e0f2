"""Performance measurement of OVSAM and of the two-backbone baselines (``ovsam bench``).

See ``docs/benchmarks.md``. Pure PyTorch, no ROS imports; the ROS overhead
benchmark (:mod:`ovsam_ros.benchmark.ros_overhead`) imports rclpy itself.
Importing this package is cheap (the CLI parser imports it); the settings and the
runner are in :mod:`ovsam_ros.benchmark.run` (torch), which imports this package
for its constants, never the other way round.
"""

#: Named vocabulary sizes: COCO, LVIS v1, ImageNet-21K (WordNet synsets shipped by timm).
VOCAB_ALIASES = {"coco": 80, "lvis": 1203, "in21k": 21843, "imagenet21k": 21843, "21k": 21843}
#: The two-backbone pipelines of the paper that the benchmark measures alongside OVSAM.
BASELINES = ("feature-crop", "image-crop")

__all__ = ["BASELINES", "VOCAB_ALIASES"]
