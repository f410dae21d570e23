# The image hack/image.sh assembles: FROM scratch, with a root filesystem the
# script prepared in the build context (`rootfs/`: the release binary, the
# glibc files `ldd` names and the CA bundle, both from Debian 12 packages,
# and the non-root user). No base image is pulled, so it builds with buildah
# where no registry is reachable. The Dockerfile at the repository's root
# builds the same image where one is.
FROM scratch

# hack/image.sh passes these from Cargo.toml and git.
ARG VERSION
ARG REVISION
ARG CREATED
ARG SOURCE
ARG DESCRIPTION
ARG LICENSES

COPY rootfs/ /

LABEL org.opencontainers.image.title="tenantry" \
      org.opencontainers.image.description="${DESCRIPTION}" \
      org.opencontainers.image.licenses="${LICENSES}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"

USER 65532:65532
WORKDIR /
ENTRYPOINT ["/usr/local/bin/tenantry"]
CMD ["run"]
