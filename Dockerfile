# Gatehouse's images: a static binary (musl) on an empty base, run as a
# non-root user. FEATURES picks the commands built in
# (docs/decisions/0022-role-builds.md):
#   docker build -t ghcr.io/gatehouse-dev/gatehouse:0.1.0 .        # every command (operator, edge, control, …)
#   docker build --build-arg FEATURES=proxy \
#     -t ghcr.io/gatehouse-dev/gatehouse-proxy:0.1.0 .                # the per-Ingress proxies
#   docker build --build-arg FEATURES=connector \
#     -t ghcr.io/gatehouse-dev/gatehouse-connector:0.1.0 .           # the connector
FROM rust:1.95-bookworm AS build
ARG FEATURES=full
RUN rustup target add x86_64-unknown-linux-musl \
 && apt-get update && apt-get install -y --no-install-recommends musl-tools ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --profile role --locked --target x86_64-unknown-linux-musl -p gatehouse \
      --no-default-features --features "$FEATURES" \
 && cp target/x86_64-unknown-linux-musl/role/gatehouse /gatehouse

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /gatehouse /gatehouse
USER 65532:65532
ENTRYPOINT ["/gatehouse"]
