# lensd serve with the CUDA backend, on NVIDIA's CUDA images (Ubuntu 24.04).
# The same packages and build commands as tools/setup.sh and tools/test.sh.
#
#   docker build -t lensd .
#   docker run --rm --gpus all -p 8080:8080 \
#     -v /srv/models:/models:ro -v /srv/lensd:/config:ro lensd
#
# /config/lensd.json is the configuration (config/README.md), naming models
# under /models and a tokens file; port 8080 (the HEALTHCHECK's), and "host"
# must be "0.0.0.0" to be reachable
# from outside the container, which lensd refuses without tokens_file (or
# --insecure). Without models in the configuration it serves the bundled demo
# models (models/, installed in /usr/local/share/lensd/models):
#   docker run --rm -p 8080:8080 lensd --host 0.0.0.0 --insecure
# No Docker engine runs in this project's CI, so this file is
# kept in step with tools/setup.sh by hand.
FROM nvidia/cuda:13.0.0-devel-ubuntu24.04 AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential pkg-config meson ninja-build dpkg-dev \
      libopenblas-dev libopenblas-openmp-dev liblapacke-dev libjansson-dev libpcre2-dev \
      libutf8proc-dev libmicrohttpd-dev libuv1-dev libgnutls28-dev libcriterion-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The test suites need ../shared, the Python tooling and (for tests/gpu) a
# GPU at build time: run tools/test.sh and tools/gpu_suite.sh outside.
# meson install puts lensd in bin/, the CUDA backend module it loads in
# lib/<multiarch>/lensd/ (lensd's run path) and models/ and web/ in
# share/lensd/.
RUN meson setup /build -Dwerror=true -Dcuda=enabled && ninja -C /build \
    && meson install -C /build --destdir /out

FROM nvidia/cuda:13.0.0-runtime-ubuntu24.04
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libopenblas0-openmp liblapacke libjansson4 libpcre2-8-0 libutf8proc3 libgomp1 \
      libmicrohttpd12t64 libuv1t64 libgnutls30t64 curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin lensd
COPY --from=build /out/usr/local /usr/local
USER lensd
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
  CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["lensd", "serve"]
CMD ["--config", "/config/lensd.json"]
