# The two set-up commands are `make demo` and `make test`; everything they need is built here.
TEMPORAL_CLI_VERSION := v1.5.1
BIN := $(CURDIR)/bin
TEMPORAL := $(BIN)/temporal
GO_TEST_FLAGS ?= -count=1 -timeout 30m

.PHONY: demo test unit integration temporal-cli bench bench-planner bench-iterable bench-worker bench-rate lint worker starter clean

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

## bench: every benchmark of docs/benchmarks.md (about 20 minutes on 2 idle cores); bench-* run one part
bench: bench-planner bench-iterable bench-worker bench-rate
## bench-planner: the DuckDB planner on 1,000,000 and 10,000,000 rows (time, CPU, peak memory)
bench-planner:
	go test -run '^$$' -bench 'BenchmarkPlan$$' -benchtime 1x -timeout 90m ./internal/warehouse/duckdb/
## bench-iterable: packing and sending, several processes on one project's rate limit
bench-iterable:
	go test -run '^$$' -bench 'BenchmarkPack$$|PackAndSend' -benchtime 1000000x -benchmem ./internal/iterable/
	go test -run '^$$' -bench 'Processes|AtTheLimit' -benchtime 1x ./internal/iterable/
## bench-worker: the whole engine (worker process) on 1,000,000 and 10,000,000 users, unlimited emulator
bench-worker: $(TEMPORAL)
	TEMPORAL_CLI=$(TEMPORAL) go test -tags integration -run '^$$' -bench WorkerCPUPerMillion -benchtime 1x -timeout 120m ./workflows/
## bench-rate: the whole engine on 1,000,000 users at Iterable's 5 bulkUpdate requests/s
bench-rate: $(TEMPORAL)
	TEMPORAL_CLI=$(TEMPORAL) go test -tags integration -run '^$$' -bench SyncAtTheRateLimit -benchtime 1x -timeout 30m ./workflows/

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
