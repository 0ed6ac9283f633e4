# The bot as a service: `serve` by default, SQLite in /data, non-root.
FROM python:3.11-slim

# wireguard-tools and iproute2 serve VPN_PROVIDER=host (see README: it also needs NET_ADMIN).
RUN apt-get update \
 && apt-get install -y --no-install-recommends wireguard-tools iproute2 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 vpnbot \
 && mkdir /data && chown vpnbot:vpnbot /data && chmod 0700 /data

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY app.py ./
COPY bot ./bot
COPY provisioner ./provisioner
COPY cards ./cards
COPY web ./web
COPY scripts/healthcheck.py ./

ENV HOST=0.0.0.0 \
    PORT=3978 \
    VPN_DATA_DIR=/data \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
VOLUME /data
USER vpnbot
EXPOSE 3978
# Healthy only when /healthz answers on the container's own address, as peers reach it (not loopback).
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD python healthcheck.py || exit 1
CMD ["python", "app.py", "serve"]
