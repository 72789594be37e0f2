# ovsam_ros on a Jetson (Orin, JetPack 6 / L4T r36): ROS 2 Humble + NVIDIA's PyTorch.
#
#   docker build -f docker/jetson.Dockerfile -t ovsam_ros:jetson .
#   docker run --runtime nvidia --network host --ipc host \
#     -v ~/weights:/weights:ro -v ~/.cache/ovsam_ros:/root/.cache/ovsam_ros ovsam_ros:jetson \
#     ros2 launch ovsam_ros ovsam.launch.py config:=/ws/install/ovsam_ros/share/ovsam_ros/config/jetson.yaml \
#       camera:=/camera/color/image_raw
#
# --network host: DDS discovery uses the robot's network (ROS_DOMAIN_ID etc. from -e);
# --ipc host: Fast DDS shared-memory transport for large images between containers.
# Base: dustynv's L4T images (jetson-containers) pair ROS 2 Humble with JetPack's CUDA,
# cuDNN, TensorRT and NVIDIA's torch/torchvision wheels. Pick the tag matching your L4T
# (`cat /etc/nv_tegra_release`); r36.x = JetPack 6.
ARG BASE_IMAGE=dustynv/ros:humble-pytorch-l4t-r36.2.0
FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1

# System numpy / OpenCV / yaml / tqdm and the ROS message packages (package.xml's rosdep keys).
RUN apt-get update && apt-get install -y --no-install-recommends \
      python3-opencv python3-yaml python3-tqdm python3-pip \
      ros-humble-vision-msgs ros-humble-diagnostic-msgs ros-humble-lifecycle-msgs ros-humble-std-srvs \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /ws/src/ovsam_ros
COPY requirements-jetson.txt ./
# --no-deps: nothing may replace the base image's NVIDIA torch/torchvision or system numpy/OpenCV.
RUN python3 -m pip install --no-deps -r requirements-jetson.txt \
    && python3 -c "import torch, torchvision, cv2, numpy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'numpy', numpy.__version__)"

COPY . .
WORKDIR /ws
RUN source /opt/ros/humble/setup.bash \
    && colcon build --packages-select ovsam_ros --cmake-args -DBUILD_TESTING=OFF \
    && rm -rf build log

# Every shell (and `docker run ... ros2 launch`) sees the workspace.
RUN echo 'source /opt/ros/humble/setup.bash && source /ws/install/setup.bash' >> /root/.bashrc
COPY docker/ros_entrypoint.sh /ros_entrypoint.sh
ENTRYPOINT ["/ros_entrypoint.sh"]
CMD ["ros2", "launch", "ovsam_ros", "ovsam.launch.py", "config:=/ws/install/ovsam_ros/share/ovsam_ros/config/jetson.yaml"]
