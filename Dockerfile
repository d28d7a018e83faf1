# syntax=docker/dockerfile:1
# The scheduler image: one image for every deployment pattern (see deploy/README.md).
#   docker build -t livedash-schedulers:0.1.0 .
#   docker run --rm livedash-schedulers:0.1.0 --list                      # the registered schedulers
#   docker run ... livedash-schedulers:0.1.0 --scheduler=csv-import      # one scheduler per container
#   docker run ... --entrypoint python livedash-schedulers:0.1.0 -m manager          # all of them
#   docker run ... --entrypoint python livedash-schedulers:0.1.0 -m manager migrate  # one-shot migration
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtualenv with the project and its drivers, compiled to bytecode -------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Only what the package needs: the wheel build reads pyproject.toml and README.md (the long description).
COPY pyproject.toml README.md ./
COPY storage ./storage
COPY domain ./domain
COPY jobs ./jobs
COPY services ./services
COPY manager ./manager
COPY runner ./runner
# Every dependency has wheels for CPython 3.11 on linux (asyncpg and aiomysql included), so no compiler is needed.
# A non-editable install: the final image gets site-packages only, not /src. pip writes the .pyc files now,
# because the root filesystem is read-only at run time.
RUN pip install ".[postgresql,mysql]" \
 && python -m compileall -q /opt/venv/lib \
 && pip uninstall -y pip setuptools wheel

# --- runtime: the virtualenv and a non-root user, nothing else -------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="livedash-schedulers" \
      org.opencontainers.image.description="Periodic background work as scheduler services, coordinated through the database." \
      org.opencontainers.image.licenses="MIT"
# Fixed ids so Kubernetes' runAsUser/fsGroup and volume ownership match the image.
RUN groupadd --system --gid 10001 scheduler \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/livedash --no-create-home \
        --shell /usr/sbin/nologin scheduler \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/livedash /var/lib/livedash/var
COPY --from=build /opt/venv /opt/venv
# SCHEDULER_HTTP_HOST: the code's default is 127.0.0.1, which nothing outside the container can reach.
# The working directory is the state volume: the SQLite default (./var/scheduler.db) lands in it, so even a
# read-only root filesystem runs the embedded database. Production sets DATABASE_URL (PostgreSQL, MariaDB).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SCHEDULER_HTTP_HOST=0.0.0.0 \
    SCHEDULER_HTTP_PORT=8080 \
    LOG_FORMAT=json
WORKDIR /var/lib/livedash
VOLUME ["/var/lib/livedash"]
USER 10001:10001
EXPOSE 8080
# The process drains on SIGTERM (readiness 503, in-flight runs get SCHEDULER_SHUTDOWN_GRACE) and exits 0.
STOPSIGNAL SIGTERM
# Ready = started and the database answers; the same check as the Kubernetes readiness probe.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('SCHEDULER_HTTP_PORT', '8080'), timeout=2)"]
ENTRYPOINT ["python", "-m", "runner"]
CMD ["--list"]
