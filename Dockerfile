# syntax=docker/dockerfile:1
#
# pleo-auth-proxy container image.
#
#   docker build --build-arg VERSION=$(git describe --tags --always) \
#     --build-arg REVISION=$(git rev-parse HEAD) -t pleo-auth-proxy .
#
# The final image is distroless (no shell, no package manager) and runs as uid/gid 65532
# (nonroot). The data listener defaults to 127.0.0.1:7380, which is right for a sidecar: only
# containers of the same pod can reach it. To publish it (docker run -p 7380:7380, or the
# chart's standalone mode), set PLEO_PROXY_LISTEN_ADDR=0.0.0.0:7380 and client tokens
# (PLEO_PROXY_CLIENT_TOKENS_FILE); the sidecar refuses a non-loopback listener without them.
# The admin listener (:7381: /metrics, /healthz, /readyz) is reachable from outside the
# container by default.

ARG GO_VERSION=1.26

# ---- build -------------------------------------------------------------------------------
# Runs on the build machine's platform and cross-compiles (docker buildx --platform ...).
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
WORKDIR /src

# Dependencies first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download

COPY . .
ARG VERSION=dev
ARG TARGETOS
ARG TARGETARCH
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/pleo-auth-proxy .

# The file store's directory, owned by nonroot so that a volume created from it is writable.
RUN mkdir -p /out/var/lib/pleo-auth-proxy && chmod 0700 /out/var/lib/pleo-auth-proxy

# ---- run ---------------------------------------------------------------------------------
FROM gcr.io/distroless/static-debian12:nonroot

ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="pleo-auth-proxy" \
      org.opencontainers.image.description="Authenticating sidecar for Pleo integrations: co-located services send plain HTTP, it adds the company's OAuth token or API key and refreshes tokens." \
      org.opencontainers.image.source="https://github.com/pleo-auth-proxy/pleo-auth-proxy" \
      org.opencontainers.image.url="https://github.com/pleo-auth-proxy/pleo-auth-proxy" \
      org.opencontainers.image.documentation="https://github.com/pleo-auth-proxy/pleo-auth-proxy#readme" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="gcr.io/distroless/static-debian12:nonroot"

COPY --from=build /out/pleo-auth-proxy /pleo-auth-proxy
COPY --from=build --chown=65532:65532 /out/var/lib/pleo-auth-proxy /var/lib/pleo-auth-proxy

USER 65532:65532
VOLUME /var/lib/pleo-auth-proxy
EXPOSE 7380 7381

# Exits 0 when the admin listener's /healthz answers 200 (reads PLEO_PROXY_ADMIN_ADDR).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/pleo-auth-proxy", "healthcheck"]

ENTRYPOINT ["/pleo-auth-proxy"]
CMD ["serve"]
