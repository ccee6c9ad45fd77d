# The project's environment for hosts without root, or without debootstrap, and the image every
# step of the Kubeflow V2 / Vertex pipeline runs in (pipeline/orchestration/kubeflow.py: DEFAULT_IMAGE):
#   docker build -t fat-audio-pipeline:0.1.0 .
#   docker run --rm -v "$PWD/out:/app/out" fat-audio-pipeline:0.1.0 make demo
#   docker run --rm fat-audio-pipeline:0.1.0 make test
# Debian 13 has glibc 2.41, which TFX 1.21's wheels need (BUILD_NOTES.md), so .ci/inenv takes its
# native venv path here, exactly as on a Debian 13 host.
FROM debian:trixie-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv python3-dev g++ make ca-certificates libsndfile1 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# the environment first, from the files it depends on, so code edits reuse this layer
COPY setup.py pyproject.toml constraints.txt README.md beam_runner.py ./
COPY .ci .ci
COPY proto proto
COPY pipeline pipeline
COPY components components
RUN .ci/inenv true
COPY . .
ENV PATH=/app/.env/venv/bin:$PATH
CMD ["make", "demo"]
