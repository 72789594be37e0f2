"""pip install for the ovsam_ros Python library (model, predictor, training, node code).

Training machines need no ROS: `pip install .` gives the model, predictor, CLI and
training pipeline. The ROS messages are built by CMake (colcon, or tools/setup.sh).
Pinned versions live in requirements.txt; the ranges here are only what the code needs.
"""

from glob import glob

from setuptools import find_packages, setup

# The files a colcon install puts in share/ovsam_ros (CMakeLists.txt) go to the same place
# under the pip prefix; ovsam_ros.resources finds them there (model YAMLs for `--model tiny`,
# the .msg definitions for rosbag label extraction, the node's parameter files).
SHARE = "share/ovsam_ros"
DATA_FILES = [(f"{SHARE}/{folder}", sorted(glob(f"{folder}/*.{ext}")))
              for folder, ext in (("config", "yaml"), ("config/models", "yaml"), ("launch", "py"),
                                  ("msg", "msg"), ("srv", "srv"))]
DATA_FILES.append((SHARE, ["package.xml"]))

setup(
    name="ovsam_ros",
    version="0.1.0",
    description="Open-Vocabulary SAM (OVSAM) for ROS 2: prompted, named instance masks",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["ovsam_ros", "ovsam_ros.*", "training", "training.*"]),
    package_data={"ovsam_ros": ["data/vocabularies/*.json", "data/samples/*", "data/models/*", "data/weights/*.yaml"],
                  "training": ["configs/*.yaml"]},
    data_files=DATA_FILES,
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "open_clip_torch>=2.24",
        "segment-anything>=1.0",
        "timm>=0.9",
        "numpy",
        "opencv-python-headless",
        "pycocotools",
        "pyyaml",
        "tqdm",
        "pillow",  # a CompressedImage's size read from its header before decoding (also torchvision's)
    ],
    extras_require={
        "train": ["tensorboard", "rosbags", "kornia==0.7.1"],
        "export": ["onnx", "onnxruntime"],
        "test": ["pytest", "pytest-timeout"],
    },
    entry_points={
        "console_scripts": [
            "ovsam = ovsam_ros.cli:main",
            "ovsam-train-stage0 = training.entry_points:stage0",
            "ovsam-train-stage1 = training.entry_points:stage1",
            "ovsam-train-stage2 = training.entry_points:stage2",
            "ovsam-train-bench = training.bench:main",
            "ovsam-evaluate = training.entry_points:evaluate",
            "ovsam-extract-bag = training.entry_points:extract_bag",
            "ovsam-make-synthetic = training.entry_points:make_synthetic",
            "ovsam-label = training.entry_points:label",
            "ovsam-bench = ovsam_ros.benchmark.cli:main",
            "ovsam-export = ovsam_ros.export.cli:main",
            "ovsam-node = ovsam_ros.ros.node_cli:main",
            "ovsam-demo-camera = ovsam_ros.ros.camera_demo:main",
            "ovsam-demo-prompts = ovsam_ros.ros.prompt_source:main",
        ],
    },
)
