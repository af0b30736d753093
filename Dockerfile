# One image for every Pressroom service: the publisher (gunicorn), the relay, both workers, beat,
# Flower and the one-shot migration. docker-compose.yml picks the process with `command:`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VAR_DIR=/var/lib/pressroom

RUN groupadd --system --gid 10001 pressroom \
 && useradd --system --uid 10001 --gid pressroom --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin pressroom

# Pinned runtime dependencies first (no test or lint tools), in their own layer: a code
# change does not reinstall them.
COPY requirements-runtime.lock /tmp/requirements.lock
RUN pip install -r /tmp/requirements.lock && rm /tmp/requirements.lock

# The project itself, as a regular (non-editable) install; the source is not kept, so every
# process imports the installed package. README.md is needed: pyproject.toml names it.
COPY pyproject.toml README.md /tmp/src/
COPY shared /tmp/src/shared
COPY services /tmp/src/services
RUN pip install --no-deps /tmp/src && rm -rf /tmp/src

# VAR_DIR belongs to the service user; a named volume mounted here inherits that ownership.
RUN mkdir -p /var/lib/pressroom && chown pressroom:pressroom /var/lib/pressroom
WORKDIR /app
USER pressroom

EXPOSE 8000
# The publisher by default. WEB_CONCURRENCY sets the number of gunicorn workers. No control
# socket: the service user has no home directory to put it in.
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--worker-class", "gthread", "--threads", "4", \
     "--worker-tmp-dir", "/dev/shm", "--no-control-socket", "--access-logfile", "-", \
     "services.publisher.wsgi:app"]
