# syntax=docker/dockerfile:1
# vodmesh in a container: the three binaries (vodmesh-node, vodmesh, vodmesh-console) on a
# small Debian runtime, run as a user without privileges.
#
#   docker build --build-arg VODMESH_GIT_COMMIT=$(git rev-parse --short HEAD) -t vodmesh .
#   docker run -v vodmesh:/var/lib/vodmesh -p 4001-4002:4001-4002/tcp -p 4001-4002:4001-4002/udp vodmesh
#
# The image runs `vodmesh-node` with its data in the volume /var/lib/vodmesh, the director on
# port 4001 (TCP and QUIC), engine i on 4002 + i, metrics and the status page on 9090. Every
# flag is also a VODMESH_* variable (`docker run -e VODMESH_ENGINES=2 ...`) and a key of
# --config FILE; an example is /etc/vodmesh/vodmesh-node.toml. compose.yaml starts a swarm.

ARG RUST_VERSION=1.95
ARG DEBIAN=trixie

FROM rust:${RUST_VERSION}-slim-${DEBIAN} AS build
# The crypto of QUIC (aws-lc-sys) is C, built by the cc crate; cmake and clang for its
# fallbacks.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake clang \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The commit `--version` shows: .git is not sent to the build (.dockerignore).
ARG VODMESH_GIT_COMMIT=
ENV VODMESH_GIT_COMMIT=${VODMESH_GIT_COMMIT}
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p vodmesh-node -p vodmesh-tools -p vodmesh-console \
    && mkdir -p /out \
    && cp target/release/vodmesh-node target/release/vodmesh target/release/vodmesh-console /out/

FROM debian:${DEBIAN}-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/vodmesh --shell /usr/sbin/nologin vodmesh \
    && mkdir -p /var/lib/vodmesh /etc/vodmesh \
    && chown vodmesh:vodmesh /var/lib/vodmesh
COPY --from=build /out/ /usr/local/bin/
COPY packaging/vodmesh-node.toml /etc/vodmesh/vodmesh-node.toml
USER vodmesh
WORKDIR /var/lib/vodmesh
ENV VODMESH_DATA=/var/lib/vodmesh \
    VODMESH_LISTEN=/ip4/0.0.0.0/tcp/4001,/ip4/0.0.0.0/udp/4001/quic-v1 \
    VODMESH_METRICS=0.0.0.0:9090 \
    VODMESH_HOME=/var/lib/vodmesh/console
VOLUME ["/var/lib/vodmesh"]
# The director, its first engine (add 4003... with --engines), metrics and status page.
EXPOSE 4001/tcp 4001/udp 4002/tcp 4002/udp 9090/tcp
ENTRYPOINT ["vodmesh-node"]
