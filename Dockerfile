# syntax=docker/dockerfile:1
# One image for both processes: the gateway is the default command, `chat-worker` runs a bot worker.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# A virtualenv copies cleanly into the runtime stage and leaves the build tools and sources behind.
RUN python -m venv /opt/chat
ENV PATH=/opt/chat/bin:$PATH
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY gateway ./gateway
COPY worker ./worker
RUN pip install --no-cache-dir .

FROM python:3.11-slim
# The defaults bind to loopback; inside a container the process must listen on every interface.
# No *_created series: they add one per counter and histogram that nothing reads.
ENV PATH=/opt/chat/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CHAT_HOST=0.0.0.0 \
    CHAT_PORT=4000 \
    CHAT_METRICS_PORT=9100 \
    CHAT_LOG_FORMAT=json \
    PROMETHEUS_DISABLE_CREATED_SERIES=True
COPY --from=build /opt/chat /opt/chat
# A fixed numeric uid lets Kubernetes' runAsNonRoot check the image without a name lookup.
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin chat
USER 10001
EXPOSE 4000 9100
# slim has no curl; the interpreter is there anyway. The worker overrides this with its metrics port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CHAT_PORT', '4000'), timeout=2)"]
CMD ["chat-gateway"]
