# One image for both commands: `llmroute operator` (control plane) and `llmroute sidecar` (data plane).
# Build:  docker build -t ghcr.io/llmroute/llmroute:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Stage 1: build a wheel of the project and install it with its dependencies into a virtualenv (with the
# `otel` extra, which the sidecar imports only when an OTLP endpoint is set).
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core/ core/
COPY operator/ operator/
COPY sidecar/ sidecar/
COPY protos/ protos/
RUN python -m venv /opt/llmroute \
 && /opt/llmroute/bin/pip install --upgrade pip \
 && /opt/llmroute/bin/pip install ".[otel]" \
 && /opt/llmroute/bin/llmroute --help >/dev/null

# Stage 2: the runtime: the virtualenv only, no compilers, no pip cache, no sources, non-root.
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="llmroute" \
      org.opencontainers.image.description="LLMRoute operator and sidecar" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 65532 llmroute \
 && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin llmroute
COPY --from=build /opt/llmroute /opt/llmroute
ENV PATH=/opt/llmroute/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 4000 4001 9443 15010 15020
ENTRYPOINT ["llmroute"]
CMD ["--help"]
