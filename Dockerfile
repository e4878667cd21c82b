# syntax=docker/dockerfile:1

# Build stage: a static binary (no cgo) so the final image needs no libc.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
# VERSION (docker compose build --build-arg VERSION=1.2.0) is what
# `dispatch version` and /health report; the build context has no .git.
ARG VERSION=""
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=linux go build -trimpath \
    -ldflags="-s -w -X github.com/campaignd/dispatch/app.version=${VERSION}" -o /out/dispatch .

# Final stage: distroless static, non-root. Migrations, seed data and the
# default configuration are embedded in the binary.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/dispatch /usr/local/bin/dispatch
USER nonroot:nonroot
EXPOSE 8080
# distroless has no shell or curl: the binary checks its own /readyz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/dispatch", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/dispatch"]
CMD ["serve"]
