# syntax=docker/dockerfile:1
#
# endcall-sidecar container image.
#
#   docker build -t endcall-sidecar:0.1.0 .
#   docker run --rm -p 127.0.0.1:50051:50051 -p 127.0.0.1:9464:9464 endcall-sidecar:0.1.0
#
# Stages:
#   chef     Rust toolchain + cargo-chef (the pinned build tools)
#   planner  reduces the workspace to a dependency "recipe" (manifests + lockfile only)
#   builder  compiles the dependencies from the recipe (a layer that stays cached until
#            Cargo.toml/Cargo.lock change), then the crate itself
#   runtime  distroless `cc` (glibc + libgcc, no shell, no package manager), nonroot user
#
# glibc, not musl: musl's default allocator serialises multithreaded allocation, which a tokio
# server feels. The builder and the runtime must use the same Debian release so the binary
# never needs a newer glibc than the runtime has: change RUST_IMAGE_SUITE and
# DISTROLESS_SUITE together (trixie = debian13, bookworm = debian12).

ARG RUST_VERSION=1.95
ARG RUST_IMAGE_SUITE=trixie
ARG DISTROLESS_SUITE=debian13
ARG CARGO_CHEF_VERSION=0.1.78

FROM rust:${RUST_VERSION}-slim-${RUST_IMAGE_SUITE} AS chef
ARG CARGO_CHEF_VERSION
# Profile overrides through the environment, so cook and build use the same profile (a mismatch
# would make the final build recompile every dependency). Stripping symbols shrinks the binary;
# panics still print their message, only the symbolised backtrace is lost.
ENV CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}" \
    && rm -rf "${CARGO_HOME}/registry" "${CARGO_HOME}/git"
WORKDIR /src

FROM chef AS planner
# .dockerignore is an allow-list: only the manifests, build.rs, proto/ and the Rust sources
# reach the build context, so editing deploy/ or docs never invalidates a layer.
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# tokio's unstable API turns the runtime's LIFO slot off (src/app/runtime.rs). Set here
# explicitly, not only through .cargo/config.toml, so that a RUSTFLAGS from the build
# environment cannot silently drop it; the dependencies are built with it too.
ENV RUSTFLAGS="--cfg tokio_unstable"
COPY .cargo .cargo
# Dependencies only (including the build-dependencies protox / tonic-prost-build).
RUN cargo chef cook --release --locked --recipe-path recipe.json
# The crate itself. Code generation runs in build.rs with protox: no protoc needed.
COPY . .
RUN cargo build --release --locked --bin endcall-sidecar \
    && install -D -m 0555 target/release/endcall-sidecar /out/endcall-sidecar \
    && install -d -m 0700 /out/state

FROM gcr.io/distroless/cc-${DISTROLESS_SUITE}:nonroot AS runtime
LABEL org.opencontainers.image.title="endcall-sidecar" \
      org.opencontainers.image.description="gRPC sidecar that decides when a voice-AI agent's call is over" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/endcall-sidecar /usr/local/bin/endcall-sidecar
# An empty state directory owned by the sidecar's user: a named volume mounted there (docker,
# compose) starts out with this owner, so ENDCALL_STATE_DIR=/var/lib/endcall needs no
# preparing. (Kubernetes' emptyDir is writable by any uid anyway.)
COPY --from=builder --chown=65532:65532 /out/state /var/lib/endcall
# The binary's own default is 127.0.0.1:50051. Inside the container it must listen on all
# interfaces: Kubernetes `grpc:` probes and other containers of a compose project reach it at the
# container's IP, not at loopback. Publish the ports to the host deliberately (see deploy/README.md).
# Metrics are off by default in the binary; the image serves them on 9464.
ENV ENDCALL_LISTEN=0.0.0.0:50051 \
    ENDCALL_METRICS_LISTEN=0.0.0.0:9464 \
    ENDCALL_LOG_FORMAT=json
# distroless "nonroot": uid/gid 65532. Numeric, so `runAsNonRoot` can verify it.
USER 65532:65532
WORKDIR /
# 50051 gRPC (EndCall API, grpc.health.v1, reflection); 9464 Prometheus text at /metrics.
EXPOSE 50051/tcp 9464/tcp
# The probe subcommand does a grpc.health.v1 Check against ENDCALL_LISTEN (0.0.0.0 -> 127.0.0.1)
# and exits 0 only when SERVING, so a draining sidecar turns unhealthy. Exec form: no shell here.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/endcall-sidecar", "probe", "--timeout", "2s"]
# SIGTERM drains (health NOT_SERVING, open streams ended) and exits 0 within --drain-timeout
# (default 10s): give `docker stop` / Kubernetes a longer grace period than that (docker's
# default of 10s is not: use `docker run --stop-timeout 20` or compose's stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/endcall-sidecar"]
# Options go after the image name (`docker run IMAGE --reply-timeout 3s`) or in ENDCALL_* variables.
CMD []
