# ray_app: the YMIR executor image (mmyolo on Ray), CUDA build.
# CUDA 13.0 (NVIDIA driver 580+); CUDA 12.9 (driver 575+); CUDA 12.6 (driver 560+):
#   docker build -t ray-app:latest .
#   docker build --build-arg CUDA_BUILD=cu129 -t ray-app:cu129 .
#   docker build --build-arg CUDA_BUILD=cu126 -t ray-app:cu126 .
#   docker build --build-arg COCO_MODELS=yolov8_n,yolov5_s -t ray-app:small .
# The pins are requirements.txt + constraints.txt, installed by the same scripts/setup.sh
# as `make setup`; only torch's build differs.
#
# CUDA_BUILD picks one of the stages below: torch's CUDA build and an nvidia/cuda base image
# of the same CUDA version. They must agree: torch's extension builder refuses to compile
# mmcv's ops with an nvcc of another CUDA major, and the image's NVIDIA_REQUIRE_CUDA (set by
# the base image) decides which host drivers may start it. TORCH_CUDA_ARCH_LIST holds only
# what that nvcc compiles (CUDA 13 starts at 7.5: no Maxwell, Pascal or Volta). Each build's
# CUDA version is recorded once, in docker/cuda-builds.yaml; tests/test_image.py fails when
# this file, the torch pin and that table disagree.
ARG CUDA_BUILD=cu130
ARG CU130_IMAGE=nvidia/cuda:13.0.3-cudnn-devel-ubuntu22.04
ARG CU129_IMAGE=nvidia/cuda:12.9.1-cudnn-devel-ubuntu22.04
ARG CU126_IMAGE=nvidia/cuda:12.6.3-cudnn-devel-ubuntu22.04

# PyPI's torch 2.13.0 wheel is the CUDA 13.0 build (it requires cuda-toolkit 13.0.3): no index to name.
FROM ${CU130_IMAGE} AS cu130
ENV TORCH_CUDA_ARCH_LIST="7.5;8.0;8.6;8.9;9.0;10.0;12.0"

# torch's own CUDA 12 wheels, for hosts whose driver is older than 580 (setup.sh installs
# torch from TORCH_INDEX_URL). 12.9 keeps Blackwell (10.0, 12.0); 12.6 keeps Volta (7.0).
FROM ${CU129_IMAGE} AS cu129
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cu129 TORCH_CUDA_ARCH_LIST="7.5;8.0;8.6;8.9;9.0;10.0;12.0"

FROM ${CU126_IMAGE} AS cu126
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 TORCH_CUDA_ARCH_LIST="7.0;7.5;8.0;8.6;8.9;9.0"

FROM ${CUDA_BUILD}
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 PYTHONUNBUFFERED=1 \
    VENV=/opt/venv PATH=/opt/venv/bin:$PATH RAY_APP_CACHE=/tmp/ray_app-cache FORCE_CUDA=1 \
    RAY_USAGE_STATS_ENABLED=0
RUN apt-get update && apt-get install -y --no-install-recommends software-properties-common curl git \
        libgl1 libglib2.0-0 build-essential ninja-build \
    && add-apt-repository -y ppa:deadsnakes/ppa && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt constraints.txt pyproject.toml README.md ./
COPY scripts/ scripts/
COPY docker/ docker/
COPY ray_app/ ray_app/
# Builds mmcv 2.0.1 with CUDA ops (after checking nvcc and torch agree on CUDA), installs the
# pinned stack and ray_app into /opt/venv.
RUN PYTHON=python3.11 bash scripts/setup.sh && rm -rf /tmp/ray_app-cache /root/.cache/pip

# The weights training starts from, baked now because the executor never downloads at run
# time: for each model of COCO_MODELS (all, none, or zoo names: yolov8_n,yolov5_s) its released
# COCO checkpoint, as mmyolo's metafile.yml names it, and the ImageNet backbone its config
# names (rtmdet tiny/s). Training takes the model's checkpoint when the task gives no
# pretrained_model_params; a model left out trains from scratch (with a warning).
ARG COCO_MODELS=all
RUN python -m ray_app.model_config.weights download --models "${COCO_MODELS}" --to /weights

COPY img-man/ /img-man/
RUN printf '#!/bin/bash\nexec python3 -m ray_app "$@"\n' > /usr/bin/start.sh && chmod 755 /usr/bin/start.sh

# The platform may pass --user UID:GID; by default run as an unprivileged user.
RUN useradd --create-home --uid 1000 ymir
USER ymir
CMD ["bash", "/usr/bin/start.sh"]
