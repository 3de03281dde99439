# keymux — the commands README.md documents.
GO ?= go
export GOFLAGS ?= -buildvcs=false

.PHONY: test tools dev bench fmt vet

## test: build the real Consul and Jaeger (once), then run every test, unit and end to end.
test: tools
	$(GO) test -count=1 -timeout 25m -v ./... 

## tools: build Consul v1.14.11 and Jaeger v1.76.0 into tools/bin (skipped when up to date).
tools:
	bash tools/build.sh

## dev: the offline demo (mock upstream + Envoy emulator + keymux).
dev:
	$(GO) run ./cmd/keymux dev

## bench: the benchmarks recorded in BENCHMARKS.md.
bench:
	$(GO) test -run '^$$' -bench . -benchtime 2000x ./policy/ ./extproc/ ./store/

fmt:
	gofmt -w $$(git ls-files '*.go')

vet:
	$(GO) vet ./...
