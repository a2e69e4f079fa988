# syntax=docker/dockerfile:1
# The imgclf serving image: ONNX Runtime and the web service only (no torch, no training).
#   docker build -t imgclf-serve .
#   docker run --rm -p 8000:8000 -v "$PWD/models:/models:ro" imgclf-serve
# EXTRAS: the pyproject.toml extras to install (default: serve); the build fails if one brings torch.

ARG PYTHON_IMAGE=python:3.12-slim

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=serve
ENV VIRTUAL_ENV=/opt/imgclf PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv "$VIRTUAL_ENV"
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
# The pip cache is a build cache mount: it speeds up rebuilds and never lands in the image.
RUN --mount=type=cache,target=/root/.cache/pip \
    "$VIRTUAL_ENV/bin/pip" install ".[$EXTRAS]"
# The serving image must stay torch-free: fail the build if any extra pulled it in.
RUN "$VIRTUAL_ENV/bin/python" -c "import importlib.util, sys; sys.exit('torch is in the serving image' if importlib.util.find_spec('torch') else 0)"

FROM ${PYTHON_IMAGE}
ARG UID=10001
ENV VIRTUAL_ENV=/opt/imgclf IMGCLF_HOME=/var/lib/imgclf PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
ENV PATH="/opt/imgclf/bin:$PATH"
COPY --from=build /opt/imgclf /opt/imgclf
# The model store: mount it at /models (or bake models in: a Dockerfile FROM this image that
# COPYs them there). IMGCLF_HOME is the only other place imgclf writes.
RUN mkdir -p /models "$IMGCLF_HOME" && chown "$UID:$UID" "$IMGCLF_HOME"
WORKDIR /var/lib/imgclf
USER ${UID}:${UID}
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2).status != 200)"]
# The API key comes from the environment: docker run -e IMGCLF_API_KEY=...
# On SIGTERM (docker stop) the server turns not ready, waits --shutdown-delay, then lets requests
# in flight finish for at most --graceful-timeout: keep their sum under the stop timeout (10 s).
CMD ["imgclf", "serve", "--host", "0.0.0.0", "--port", "8000", "--model-dir", "/models", \
     "--shutdown-delay", "2", "--graceful-timeout", "5"]
