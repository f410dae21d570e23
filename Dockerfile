# The tenantry image, for places where a registry is reachable:
#
#   docker build -t registry.example/tenantry:0.1.0 .
#
# It pulls rust:1-bookworm to build and distroless/cc-debian12 (glibc,
# libgcc, CA certificates, user 65532) to run. On machines with no registry
# (this project's own, and CI), hack/image.sh builds the same image instead:
# the same binary, the same files from Debian 12 packages, the same user,
# entrypoint and labels, FROM scratch with buildah (hack/lib/image.Dockerfile),
# and a test (tests/integration/image.rs) runs the operator from it.
FROM docker.io/library/rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p tenantry --bin tenantry \
 && install -D -m 0755 target/release/tenantry /out/tenantry

FROM gcr.io/distroless/cc-debian12:nonroot
# Give them at build time: --build-arg VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
# --build-arg REVISION=$(git rev-parse HEAD) --build-arg CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=https://github.com/tenantry/tenantry
COPY --from=build /out/tenantry /usr/local/bin/tenantry
LABEL org.opencontainers.image.title="tenantry" \
      org.opencontainers.image.description="Kubernetes operator that provisions isolated per-tenant PostgreSQL, S3, KMS and Secrets Manager resources, all or nothing, and proves the isolation holds" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
USER 65532:65532
WORKDIR /
ENTRYPOINT ["/usr/local/bin/tenantry"]
CMD ["run"]
