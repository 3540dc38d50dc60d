# The ML execution environment as an image (production, GPU hosts): serve.py (TGI-compatible) and the
# job programs under workers/jobs/, with a CUDA build of torch. The console image never contains torch.
#   docker build -f Dockerfile.ml -t llmdeploy/ml:dev .
# Its entrypoint is named text-generation-launcher, so the console starts it exactly as it starts TGI; `vllm serve`
# runs the vLLM-flavoured server (vllm_serve.py), so an image derived with ENTRYPOINT ["vllm", "serve"] stands in
# for vLLM's OpenAI server image.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04
FROM ${CUDA_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/data \
    HF_HUB_DISABLE_TELEMETRY=1 \
    PORT=80 \
    ML_PYTHON=/opt/ml/bin/python \
    PYTHONPATH=/opt/app

RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv tini \
    && rm -rf /var/lib/apt/lists/*

COPY requirements-ml.txt /opt/requirements-ml.txt
RUN python3.11 -m venv /opt/ml \
    && /opt/ml/bin/pip install --no-cache-dir --extra-index-url ${TORCH_INDEX} -r /opt/requirements-ml.txt

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
