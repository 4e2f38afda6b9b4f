# syntax=docker/dockerfile:1
# The incident SLA engine: `docker build -t incident-sla-engine .`
# Runs as an unprivileged user on a read-only root file system; `incidents serve` by default,
# `incidents db migrate` for the migration job (same image, other command).

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- build: a virtualenv with the dependencies, then the project ------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app

# Dependencies first: this layer is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

# The project keeps its repository layout under /app: policies/ and schemas/ are read from there.
COPY services ./services
COPY policies ./policies
COPY schemas ./schemas
RUN pip install --no-deps -e . \
 && python -m compileall -q /app/services /opt/venv/lib

# ---- runtime ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="incident-sla-engine" \
      org.opencontainers.image.description="Event-driven incident SLA engine (Kafka in, Kafka out, Postgres event log)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 engine \
 && useradd --system --uid 10001 --gid engine --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin engine
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    INCIDENTS_POLICY_DIR=/app/policies \
    INCIDENTS_HTTP_PORT=8080
WORKDIR /app
USER 10001:10001
EXPOSE 8080
# No curl in slim images: the interpreter does the probe.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('INCIDENTS_HTTP_PORT', '8080'), timeout=4)"
STOPSIGNAL SIGTERM
ENTRYPOINT ["incidents"]
CMD ["serve"]
