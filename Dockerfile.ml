# The ML execution environment as an image (production, GPU hosts): serve.py (TGI-compatible) and the
# job programs under workers/jobs/, with a CUDA build of torch. The console image never contains torch.
#   scripts/bundle_wheels.py ml DIR && scripts/bundle_images.sh DIR ml     # llmdeploy/ml, from the pinned wheels
# Its entrypoint is named text-generation-launcher, so the console starts it exactly as it starts TGI; `vllm serve`
# runs the vLLM-flavoured server (vllm_serve.py), so an image derived with ENTRYPOINT ["vllm", "serve"] stands in
# for vLLM's OpenAI server image.
#
# Nothing is pulled: the base is the bundle's own Debian image (BASE_IMAGE, debootstrapped by scripts/bundle_base.sh),
# Python 3.11 comes from Debian's packages, and the Python packages from wheels/ in the build context, exactly the
# lock's versions with no index. The CUDA build needs no CUDA base image: torch's CUDA wheels carry the CUDA runtime
# (the nvidia-* wheels the ml-cuda lock lists), and the host's driver comes in through the NVIDIA container toolkit.
ARG BASE_IMAGE=llmdeploy-base:bookworm

# Two stages: `build` installs the wheels into /opt/ml; the final image copies only that venv, so the wheels (a layer
# COPYed, then deleted in a later layer, would still be in the image) never reach it. Both start from `runtime`, so the
# venv's interpreter is the same Debian python3 in both.
FROM ${BASE_IMAGE} AS runtime

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/data \
    HF_HUB_DISABLE_TELEMETRY=1 \
    PORT=80 \
    ML_PYTHON=/opt/ml/bin/python \
    PYTHONPATH=/opt/app

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 tini \
    && rm -rf /var/lib/apt/lists/*

FROM runtime AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
COPY wheels /tmp/wheels
RUN python3 -m venv /opt/ml \
    && /opt/ml/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels/ml -r /tmp/wheels/ml.lock.txt

FROM runtime
COPY requirements-ml.txt /opt/requirements-ml.txt
COPY --from=build /opt/ml /opt/ml
COPY workers/__init__.py /opt/app/workers/__init__.py
COPY workers/jobs /opt/app/workers/jobs
COPY deploy/ml/text-generation-launcher /usr/local/bin/text-generation-launcher
COPY deploy/ml/vllm /usr/local/bin/vllm

# Runs as an unprivileged user; the model store is mounted read-only at /data, the working dir is a tmpfs.
RUN useradd --uid 1000 --create-home ml
USER 1000
WORKDIR /tmp
EXPOSE 80
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "text-generation-launcher"]
