# keymux — the commands README.md documents.
GO ?= go
export GOFLAGS ?= -buildvcs=false

.PHONY: test tools prometheus js dev bench fmt vet

## test: build the real Consul and Jaeger (once), install Prometheus and the npm client, then run every test, unit and end to end.
test: tools prometheus js
	$(GO) test -count=1 -timeout 25m -v ./... 

## tools: build Consul v1.14.11 and Jaeger v1.76.0 into tools/bin (skipped when up to date).
tools:
	bash tools/build.sh

## prometheus: install prometheus and promtool (the distribution's package; skipped when on $PATH).
prometheus:
	bash tools/install-prometheus.sh

## js: the official npm `openai` client the JavaScript end-to-end test runs (pinned in package-lock.json).
js:
	npm ci --prefix examples/clients/js --no-audit --no-fund

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
