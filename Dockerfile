# The one image of Gatehouse: ghcr.io/gatehouse-dev/gatehouse:<version>.
# A static binary (musl) on an empty base; runs as a non-root user.
#   docker build -t ghcr.io/gatehouse-dev/gatehouse:0.1.0 .
FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl \
 && apt-get update && apt-get install -y --no-install-recommends musl-tools ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl -p gatehouse \
 && cp target/x86_64-unknown-linux-musl/release/gatehouse /gatehouse

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /gatehouse /gatehouse
USER 65532:65532
ENTRYPOINT ["/gatehouse"]
