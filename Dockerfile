# lensd on Debian 12, CPU backend. Build:  docker build -t lensd .
# Run:    docker run --rm -v "$HOME/.cache/huggingface:/root/.cache/huggingface:ro" lensd \
#           run --model gpt2 --prompt "The Eiffel Tower is in" --answer Paris
FROM debian:bookworm-slim AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential pkg-config meson ninja-build dpkg-dev \
      libopenblas-dev libopenblas-openmp-dev liblapacke-dev libjansson-dev libpcre2-dev \
      libutf8proc-dev libmicrohttpd-dev libuv1-dev libcriterion-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The test suite needs ../shared and the Python tooling: run tools/test.sh outside.
RUN meson setup /build -Dwerror=true -Dcuda=disabled && ninja -C /build server/lensd

FROM debian:bookworm-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libopenblas0-openmp liblapacke libjansson4 libpcre2-8-0 libutf8proc2 libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /build/server/lensd /usr/local/bin/lensd
ENTRYPOINT ["lensd"]
CMD ["--help"]
