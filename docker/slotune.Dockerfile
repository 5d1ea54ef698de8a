# The slotune sidecar (and CLI). No vLLM inside: it watches a vLLM server over HTTP.
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY slotune ./slotune
COPY collectors ./collectors
COPY loadgen ./loadgen
COPY playbooks ./playbooks
COPY tuner ./tuner
COPY dashboards ./dashboards
RUN pip install --no-cache-dir ".[postgres]"
ENV SLOTUNE_DATA_DIR=/var/lib/slotune \
    SLOTUNE_DASHBOARDS_DIR=/src/dashboards
RUN useradd --system --uid 10001 slotune && mkdir -p /var/lib/slotune && chown slotune /var/lib/slotune
USER slotune
EXPOSE 8080
ENTRYPOINT ["slotune"]
CMD ["sidecar", "--config", "/etc/slotune/sidecar.yaml"]
