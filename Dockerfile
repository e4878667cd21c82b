# syntax=docker/dockerfile:1

# Build stage: a static binary (no cgo) so the final image needs no libc.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags="-s -w" -o /out/dispatch .

# Final stage: distroless static, non-root. Migrations, seed data and the
# default configuration are embedded in the binary.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/dispatch /usr/local/bin/dispatch
USER nonroot:nonroot
EXPOSE 8080
# distroless has no shell or curl: the binary checks its own /health.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/dispatch", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/dispatch"]
CMD ["serve"]
