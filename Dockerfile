# Parley: one image for the gateway (`parley serve`), the Celery worker and beat.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PARLEY_DATA_DIR=/data

WORKDIR /src
COPY pyproject.toml README.md ./
COPY parley ./parley
COPY gateway ./gateway
COPY channels ./channels
COPY bots ./bots
COPY inbox ./inbox
COPY crm_core ./crm_core
COPY campaigns ./campaigns
COPY routing ./routing
RUN pip install . \
    && rm -rf /src/build

RUN useradd --system --create-home --home-dir /home/parley --uid 10001 parley \
    && mkdir -p /data \
    && chown parley:parley /data
USER parley
WORKDIR /home/parley
VOLUME ["/data"]

EXPOSE 8080

# slim has no curl; the standard library is enough. Worker and beat turn this off in compose.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"]

CMD ["parley", "serve", "--host", "0.0.0.0", "--port", "8080"]
