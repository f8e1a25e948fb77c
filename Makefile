# The two set-up commands are `make demo` and `make test`; everything they need is built here.
TEMPORAL_CLI_VERSION := v1.5.1
BIN := $(CURDIR)/bin
TEMPORAL := $(BIN)/temporal
GO_TEST_FLAGS ?= -count=1 -timeout 30m

.PHONY: demo test unit integration temporal-cli bench lint worker starter clean

## demo: the main job on the embedded default (Temporal dev server + UI, Iterable emulator, DuckDB)
demo: $(TEMPORAL)
	go run ./starter demo

## test: unit and integration tests (real Temporal dev server, real DuckDB, the Iterable emulator)
test: $(TEMPORAL) lint
	TEMPORAL_CLI=$(TEMPORAL) go test -tags integration $(GO_TEST_FLAGS) ./...

## unit: unit tests only (no dev server)
unit:
	go test $(GO_TEST_FLAGS) ./...

## temporal-cli: build the Temporal CLI dev server into bin/ (about 6 minutes on a cold module cache)
temporal-cli: $(TEMPORAL)
$(TEMPORAL):
	GOBIN=$(BIN) go install github.com/temporalio/cli/cmd/temporal@$(TEMPORAL_CLI_VERSION)

## bench: benchmarks (numbers go to docs/benchmarks.md)
bench:
	go test -run '^$$' -bench . -benchmem ./...

## lint: gofmt and go vet
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
		if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	go vet -tags integration ./...

worker:
	go build -o $(BIN)/worker ./worker
starter:
	go build -o $(BIN)/starter ./starter

clean:
	rm -rf examples/.state examples/data
