# The web app and API (python app.py) in a container. CPU by default:
#   docker build -t sd-cloud-edge .
#   docker run -p 7860:7860 sd-cloud-edge
# GPU: a CUDA base image with Python 3.11 and TensorFlow's CUDA wheels instead of tensorflow-cpu:
#   docker build -t sd-cloud-edge:gpu \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.5.1-cudnn-runtime-ubuntu22.04 \
#     --build-arg TF_PACKAGE="tensorflow[and-cuda]==2.21.0" .
#   docker run --gpus all -p 7860:7860 sd-cloud-edge:gpu
# Serve other weights (and exports) by mounting them:
#   docker run -v /models:/models -p 7860:7860 sd-cloud-edge python app.py --model /models/sd15 --exports /models/exports
ARG BASE_IMAGE=python:3.11-slim

# The browser client's TensorFlow.js (edge/web/node_modules), from its lock file.
FROM node:20-slim AS web
WORKDIR /web
COPY edge/web/package.json edge/web/package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund --loglevel=error

FROM ${BASE_IMAGE}
ARG TF_PACKAGE=tensorflow-cpu==2.21.0

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    TF_CPP_MIN_LOG_LEVEL=2 GRADIO_ANALYTICS_ENABLED=False HOST=0.0.0.0 PORT=7860

# CUDA base images have no Python 3.11 of their own; Debian's python:3.11 images do.
RUN if ! command -v python3.11 >/dev/null 2>&1; then \
      apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        software-properties-common && add-apt-repository -y ppa:deadsnakes/ppa && apt-get update && \
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3.11 python3.11-venv && \
      rm -rf /var/lib/apt/lists/*; \
    fi && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
COPY requirements.txt constraints.txt ./
RUN grep -v '^tensorflow-cpu' requirements.txt > /tmp/requirements.txt && \
    grep -v -i '^tensorflow[_-]cpu' constraints.txt > /tmp/constraints.txt && \
    pip install --upgrade pip && \
    pip install "${TF_PACKAGE}" -r /tmp/requirements.txt -c /tmp/constraints.txt

COPY models/ models/
COPY webapp/ webapp/
COPY edge/ edge/
COPY --from=web /web/node_modules edge/web/node_modules
COPY app.py README.md ./

RUN useradd --create-home --uid 1000 app && chown -R app /app
USER app
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s CMD \
  python -c "import urllib.request,os; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/api/v1/health')"
CMD ["python", "app.py"]
