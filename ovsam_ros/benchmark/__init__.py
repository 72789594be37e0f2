"""Performance measurement of OVSAM and of the two-backbone baselines (``ovsam bench``).

See ``docs/benchmarks.md``. Pure PyTorch, no ROS imports; the ROS overhead
benchmark (:mod:`ovsam_ros.benchmark.ros_overhead`) imports rclpy itself.
Importing this package is cheap (the CLI parser imports it); the heavy parts
load on first use.
"""

from typing import Any

#: Named vocabulary sizes: COCO, LVIS v1, ImageNet-21K (WordNet synsets shipped by timm).
VOCAB_ALIASES = {"coco": 80, "lvis": 1203, "in21k": 21843, "imagenet21k": 21843, "21k": 21843}
#: The two-backbone pipelines of the paper that the benchmark measures alongside OVSAM.
BASELINES = ("feature-crop", "image-crop")

__all__ = ["BASELINES", "BenchSettings", "VOCAB_ALIASES", "run_benchmark"]


def __getattr__(name: str) -> Any:
    if name in ("BenchSettings", "run_benchmark"):
        from ovsam_ros.benchmark import run

        return getattr(run, name)
    raise AttributeError(name)
