# ovsam_ros on a Jetson (Orin, JetPack 6 / L4T r36): ROS 2 Humble + NVIDIA's PyTorch.
#
#   docker build -f docker/jetson.Dockerfile -t ovsam_ros:jetson .
#   docker run --runtime nvidia --network host --ipc host \
#     -v ~/ovsam_weights:/root/ovsam_weights:ro -v ~/.cache/ovsam_ros:/root/.cache/ovsam_ros \
#     ovsam_ros:jetson \
#     ros2 launch ovsam_ros ovsam.launch.py config:=/ws/install/ovsam_ros/share/ovsam_ros/config/jetson.yaml \
#       camera:=/camera/color/image_raw
#
# Mounts: the model YAMLs name their files under ~ (config/models/rn50x16.yaml: ~/ovsam_weights/...),
# which is /root in the container (it runs as root). ~/.cache/ovsam_ros keeps the text-embedding,
# TensorRT-engine and compile caches across runs. Other models' folders (~/ovsam_onnx, ~/runs):
# docs/jetson.md, "The container image".
# --network host: DDS discovery uses the robot's network (pass ROS_DOMAIN_ID etc. with -e). A bench
# test that must stay on this machine: -e ROS_LOCALHOST_ONLY=1 (Humble ignores
# ROS_AUTOMATIC_DISCOVERY_RANGE). The r36.2.0 images default to RMW_IMPLEMENTATION=rmw_cyclonedds_cpp;
# pass -e RMW_IMPLEMENTATION=rmw_fastrtps_cpp when the robot runs Fast DDS.
# --ipc host: Fast DDS's shared-memory transport to other containers on this host.
#
# Base: dustynv's images (github.com/dusty-nv/jetson-containers) build ROS 2 Humble from source into
# $ROS_ROOT/install (ROS_ROOT=/opt/ros/humble) on JetPack's CUDA, cuDNN, TensorRT and a CUDA OpenCV;
# their ROS build includes vision_msgs, diagnostic_msgs, std_srvs and tf2. Published Humble tags for
# L4T r36 (match `cat /etc/nv_tegra_release`):
#   dustynv/ros:humble-ros-base-l4t-r36.2.0   JetPack 6.0 DP, CUDA 12.2 (default; torch args below)
#   dustynv/ros:humble-ros-base-l4t-r36.3.0   JetPack 6.0: check its CUDA, set the torch args to match
#   dustynv/ros:humble-desktop-l4t-r36.2.0    + rviz2 and the desktop tools
#   dustynv/ros:humble-desktop-l4t-r36.4.0    JetPack 6.1, CUDA 12.6: TORCH_INDEX_URL=.../jp6/cu126
#                                             TORCH_VERSION=2.5.0 TORCHVISION_VERSION=0.20.0
# No published r36 image has both ROS 2 and PyTorch (dustynv/ros:humble-pytorch-* ends at r35.3.1).
ARG BASE_IMAGE=dustynv/ros:humble-ros-base-l4t-r36.2.0
FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The base images set ROS_ROOT; the fallback is their value.
ENV ROS_ROOT=${ROS_ROOT:-/opt/ros/humble} \
    DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# torch/torchvision: the versions jetson-containers installs for JetPack 6.0 / CUDA 12.2, from its
# pip index (the host has been jetson.webredirect.org and pypi.jetson-ai-lab.dev before); PyPI's
# aarch64 torch has no CUDA. A base that already has torch keeps it.
ARG TORCH_INDEX_URL=https://pypi.jetson-ai-lab.io/jp6/cu122
ARG TORCH_VERSION=2.2.0
ARG TORCHVISION_VERSION=0.17.2
# Everything else comes from PyPI, named explicitly: later base images point PIP_INDEX_URL at a
# build cache.
ARG PYPI_INDEX_URL=https://pypi.org/simple
# onnxruntime-gpu for `backend: onnx` (config/models/jetson_onnx.yaml), e.g. 1.17.0 on CUDA 12.2.
ARG ONNXRUNTIME_GPU_VERSION=

# The ROS apt source is dropped: ROS is built from source here, and the key in 2023 images expired
# on 2025-06-01, which fails apt-get update. The libraries are those jetson-containers installs next
# to its torch and torchvision wheels.
RUN rm -f /etc/apt/sources.list.d/ros2.list \
    && apt-get update && apt-get install -y --no-install-recommends \
      libopenblas-dev libopenmpi-dev openmpi-bin openmpi-common gfortran libomp-dev libjpeg-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/* \
    && if python3 -c "import torch, torchvision" 2>/dev/null; then echo "torch from the base image"; \
       else python3 -m pip install --index-url "${TORCH_INDEX_URL}" \
              "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" "numpy<2"; fi \
    && python3 -c "import json, os, torch, torchvision; c = torch.version.cuda; assert c, 'CPU-only torch: check TORCH_INDEX_URL'; f = '/usr/local/cuda/version.json'; v = json.load(open(f)) if os.path.exists(f) else {}; base = v.get('cuda_nvcc', v.get('cuda', {'version': c}))['version']; assert (base + '.').startswith(c + '.'), f'torch is built for CUDA {c}, the image has CUDA {base}'; print('torch', torch.__version__, 'CUDA', c, 'torchvision', torchvision.__version__)" \
    && if [ -n "${ONNXRUNTIME_GPU_VERSION}" ]; then \
         python3 -m pip install --index-url "${TORCH_INDEX_URL}" "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}" "numpy<2" \
         && python3 -c "import onnxruntime as ort; print('onnxruntime', ort.__version__, ort.get_available_providers())"; fi

WORKDIR /ws/src/ovsam_ros
COPY requirements-jetson.txt ./
# --no-deps: nothing may replace NVIDIA's torch or the image's numpy/OpenCV, so the file lists the
# whole closure; `pip check` fails the build if it misses something (huggingface_hub is left out on
# purpose, see the file).
RUN python3 -m pip install --index-url "${PYPI_INDEX_URL}" --only-binary=:all: --no-deps -r requirements-jetson.txt \
    && { python3 -m pip check > /tmp/pip-check.txt || true; } \
    && names="$(sed -e 's/#.*//' -e 's/[[:space:]]//g' -e 's/[][;<>=!~].*//' requirements-jetson.txt | grep -v '^$' \
                | tr '[:upper:]' '[:lower:]' | sed 's/[_.]/-/g' | paste -sd'|' -)" \
    && if grep -E "^(${names}) " /tmp/pip-check.txt | grep -v 'requires huggingface-hub, which is not installed'; then \
         echo "requirements-jetson.txt misses the dependencies above"; exit 1; fi \
    && python3 -c "import torch, torchvision, cv2, numpy, open_clip, segment_anything, timm, pycocotools.mask, yaml, tqdm, rosbags.rosbag2, apsw, backports.zstd, PIL.Image, onnx, ml_dtypes, safetensors.torch, ftfy, regex; print('numpy', numpy.__version__, 'cv2', cv2.__version__, 'open_clip', open_clip.__version__, 'timm', timm.__version__)"

# The ROS build of the base images has vision_msgs; another base gets it from source into this
# workspace, the way those images build it (the rviz plugin is skipped).
ARG VISION_MSGS_TAG=4.1.1
RUN source "${ROS_ROOT}/install/setup.bash" \
    && if ! ros2 pkg prefix vision_msgs > /dev/null 2>&1; then \
         git clone --depth 1 --branch "${VISION_MSGS_TAG}" https://github.com/ros-perception/vision_msgs /ws/src/vision_msgs \
         && touch /ws/src/vision_msgs/vision_msgs_rviz_plugins/COLCON_IGNORE; fi

# Only what CMakeLists.txt installs: the checkout's .venv and build folders stay out of the context.
COPY package.xml CMakeLists.txt setup.py ./
COPY msg msg/
COPY srv srv/
COPY ovsam_ros ovsam_ros/
COPY training training/
COPY scripts scripts/
COPY launch launch/
COPY config config/
WORKDIR /ws
RUN source "${ROS_ROOT}/install/setup.bash" \
    && colcon build --packages-up-to ovsam_ros --cmake-args -DBUILD_TESTING=OFF \
    && rm -rf build log \
    && source /ws/install/setup.bash \
    && python3 -c "import rclpy, std_msgs.msg, sensor_msgs.msg, vision_msgs.msg, visualization_msgs.msg, diagnostic_msgs.msg, std_srvs.srv, lifecycle_msgs.msg, rcl_interfaces.msg, tf2_ros, ovsam_ros.msg, ovsam_ros.ros.node, ovsam_ros.ros.node_cli, ovsam_ros.cli, ovsam_ros.export.cli, ovsam_ros.benchmark.cli, training.entry_points; print('ovsam_ros imports OK')" \
    && ovsam --help > /dev/null

# Every shell (and `docker run ... ros2 launch`) sees ROS and the workspace.
RUN echo 'source "${ROS_ROOT:-/opt/ros/humble}/install/setup.bash" && source /ws/install/setup.bash' >> /root/.bashrc
COPY docker/ros_entrypoint.sh /ros_entrypoint.sh
ENTRYPOINT ["/ros_entrypoint.sh"]
CMD ["ros2", "launch", "ovsam_ros", "ovsam.launch.py", "config:=/ws/install/ovsam_ros/share/ovsam_ros/config/jetson.yaml"]
