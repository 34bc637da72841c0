# ray_app: the YMIR executor image (mmyolo on Ray), CUDA build.
#   docker build -t ray-app:latest .
#   docker build --build-arg COCO_WEIGHTS="https://…/yolov8_n_syncbn_fast_8xb16-500e_coco_….pth" -t ray-app:coco .
# The pins are requirements.txt + constraints.txt, installed by the same scripts/setup.sh
# as `make setup`; only torch's build differs (PyPI's default torch wheel is the CUDA one).
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 PYTHONUNBUFFERED=1 \
    VENV=/opt/venv PATH=/opt/venv/bin:$PATH RAY_APP_CACHE=/tmp/ray_app-cache \
    FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="7.0;7.5;8.0;8.6;8.9;9.0"
RUN apt-get update && apt-get install -y --no-install-recommends software-properties-common curl git \
        libgl1 libglib2.0-0 build-essential ninja-build \
    && add-apt-repository -y ppa:deadsnakes/ppa && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt constraints.txt pyproject.toml README.md ./
COPY scripts/ scripts/
COPY ray_app/ ray_app/
# Builds mmcv 2.0.1 with CUDA ops, installs the pinned stack and ray_app into /opt/venv.
RUN PYTHON=python3.11 bash scripts/setup.sh && rm -rf /tmp/ray_app-cache /root/.cache/pip

# Optional COCO-pretrained checkpoints (space-separated URLs), matched to model_name by
# their mmyolo config name; training uses them when the task gives no pretrained model.
ARG COCO_WEIGHTS=""
RUN mkdir -p /weights && for url in ${COCO_WEIGHTS}; do curl -fsSL -o "/weights/$(basename "$url")" "$url"; done

COPY img-man/ /img-man/
RUN printf '#!/bin/bash\nexec python3 -m ray_app "$@"\n' > /usr/bin/start.sh && chmod 755 /usr/bin/start.sh

# The platform may pass --user UID:GID; by default run as an unprivileged user.
RUN useradd --create-home --uid 1000 ymir
USER ymir
CMD ["bash", "/usr/bin/start.sh"]
