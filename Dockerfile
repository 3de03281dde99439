# syntax=docker/dockerfile:1
#
# keymux container images.
#
#   docker build -t keymux .                     the sidecar (default target: the last stage)
#   docker build -t keymux-mock --target mock .  the mock OpenAI-compatible upstream (demos, compose)
#   docker build --build-arg VERSION=v0.1.0 …    stamps `keymux version`
#
# Both are static Go binaries (CGO off) on distroless/static (CA bundle, tzdata, /etc/passwd with
# nonroot, no shell, no package manager), running as the non-root user 65532.
# deploy/crosscheck_test.go checks this file against go.mod (Go version), keymux's flag defaults
# (EXPOSE) and docker-compose.yml (targets, ports).

# ---- build: both binaries --------------------------------------------------------------------
# The Go minor version follows go.mod's `go` directive (1.26.x): the builder must be at least that
# patch, or the go command would try to download a newer toolchain.
FROM golang:1.26.8 AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local
# Dependencies first: this layer is reused until go.mod / go.sum change.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
COPY . .
ARG VERSION=dev
# -trimpath: no build-machine paths in the binary; -s -w: no symbol table / DWARF.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath \
      -ldflags "-s -w -X github.com/keymux/keymux/cmd/keymux/app.Version=${VERSION}" \
      -o /out/keymux ./cmd/keymux \
 && go build -trimpath -ldflags "-s -w" \
      -o /out/mockupstream ./examples/mockupstream/cmd/mockupstream \
 && mkdir -p /out/state /out/run
# /out/state becomes /var/lib/keymux (--state-dir: the last-good Consul snapshot) and /out/run
# /run/keymux (where docker-compose.yml's keymux creates its ext_proc socket), both owned by the
# runtime user, so a named volume mounted there starts with the right owner.

# ---- mock: the mock upstream (docker build --target mock) -------------------------------------
FROM gcr.io/distroless/static-debian12:nonroot AS mock
COPY --from=build /out/mockupstream /mockupstream
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/mockupstream"]
# Inside a container the mock must listen on every interface to be reachable from keymux/Envoy.
CMD ["-listen", "0.0.0.0:8080"]

# ---- keymux: the sidecar (default target) -----------------------------------------------------
FROM gcr.io/distroless/static-debian12:nonroot AS keymux
COPY --from=build /out/keymux /keymux
COPY --from=build --chown=65532:65532 /out/state /var/lib/keymux
COPY --from=build --chown=65532:65532 /out/run /run/keymux
USER 65532:65532
# Where the Consul source keeps its last-good snapshot (served when Consul is unreachable at start).
ENV KEYMUX_STATE_DIR=/var/lib/keymux
# ext_proc gRPC and admin HTTP (/healthz /readyz /status /stats /metrics): keymux's defaults.
# Both listen on 127.0.0.1 unless told otherwise, which is right for a sidecar sharing Envoy's
# network namespace (a Kubernetes pod). When Envoy runs in another container (docker compose),
# use KEYMUX_GRPC=unix:/run/keymux/extproc.sock on a volume both mount: ext_proc replies carry the
# upstream API keys, so the processor gets no TCP port. keymux creates the socket with mode 0660
# (user and group 65532): Envoy must run with uid or group 65532. The admin server then needs
# KEYMUX_ADMIN=0.0.0.0:9464 to be reachable from other containers.
EXPOSE 50051 9464
ENTRYPOINT ["/keymux"]
# Consul is the source of truth (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN… from the environment);
# every other flag can come from KEYMUX_* variables (KEYMUX_GRPC, KEYMUX_ADMIN, KEYMUX_STATE_DIR…).
# For a file source instead: docker run … keymux serve --config /etc/keymux/keymux.yaml
CMD ["serve", "--consul"]
