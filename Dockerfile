# syntax=docker/dockerfile:1
# One image build for both services: `--target producer` or `--target host`.
# Build and runtime are both Debian 12 (bookworm); the runtime is distroless, non-root.

ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.73 \
    && rustup target add wasm32-wasip2
WORKDIR /src

# The dependency recipe changes only when Cargo.toml/Cargo.lock do, so the next stage's
# dependency build stays cached across source edits.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked -p host -p producer \
    && cargo xtask build-handlers

FROM gcr.io/distroless/cc-debian12:nonroot AS producer
COPY --from=builder /src/target/release/producer /usr/local/bin/producer
USER 65532:65532
EXPOSE 9001 9002
ENV PORT=9001 INTERNAL_PORT=9002
ENTRYPOINT ["/usr/local/bin/producer"]

FROM gcr.io/distroless/cc-debian12:nonroot AS host
COPY --from=builder /src/target/release/host /usr/local/bin/host
# The default handlers: seeded into HANDLERS_DIR (a shared volume in production) when it is empty.
COPY --from=builder /src/target/handlers/ /opt/handlers/
COPY --from=builder --chown=65532:65532 /src/target/handlers/ /handlers/
USER 65532:65532
EXPOSE 9000
ENV PORT=9000 HANDLERS_DIR=/handlers HANDLERS_SEED_DIR=/opt/handlers
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["/usr/local/bin/host", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/host"]
