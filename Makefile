# The two set-up commands are `make demo` and `make test`; everything they need is built here.
TEMPORAL_CLI_VERSION := v1.5.1
BIN := $(CURDIR)/bin
TEMPORAL := $(BIN)/temporal
GO_TEST_FLAGS ?= -count=1 -timeout 30m
# GoogleSQL's reference analyzer (ZetaSQL LocalService gRPC server, Linux x86-64) from the npm
# package @fivetrandevelopers/zetasql (MIT; 110 MB download, 85 MB unpacked: the server and its
# .proto files only). Set ZETASQL_SERVER=/path/to/remote_server to use your own (its .proto files
# in ZETASQL_PROTOS, default: protos/ beside it).
ZETASQL_NPM_VERSION := 1.13.0
ZETASQL_NPM_SHA512 := c97f40a5af7af27a764dcf87adfe017fa1b3efb91054b2032da370a2f33dd55070c834c31750baa20954aa6954e857b9fd3542131b2722e79688f6a1ad81084d
ZETASQL_SERVER ?= $(BIN)/zetasql-$(ZETASQL_NPM_VERSION)/remote_server.so

.PHONY: demo test unit integration temporal-cli zetasql bench-lists bench bench-planner bench-iterable bench-worker bench-bigquery bench-rate lint worker starter clean

## demo: the main job on the embedded default (Temporal dev server + UI, Iterable emulator, DuckDB)
demo: $(TEMPORAL)
	go run ./starter demo

## test: unit and integration tests (real Temporal dev server, real DuckDB, the Iterable emulator,
## GoogleSQL's analyzer over the generated BigQuery SQL)
test: $(TEMPORAL) $(ZETASQL_SERVER) lint
	TEMPORAL_CLI=$(TEMPORAL) ZETASQL_SERVER=$(ZETASQL_SERVER) go test -tags integration $(GO_TEST_FLAGS) ./...

## unit: unit tests only (no dev server)
unit:
	go test $(GO_TEST_FLAGS) ./...

## temporal-cli: build the Temporal CLI dev server into bin/ (about 6 minutes on a cold module cache)
temporal-cli: $(TEMPORAL)
$(TEMPORAL):
	GOBIN=$(BIN) go install github.com/temporalio/cli/cmd/temporal@$(TEMPORAL_CLI_VERSION)

## zetasql: unpack the ZetaSQL analyzer server into bin/ from the npm registry (about 10 s)
zetasql: $(ZETASQL_SERVER)
$(BIN)/zetasql-$(ZETASQL_NPM_VERSION)/remote_server.so:
	@command -v npm >/dev/null || { echo "npm is needed to fetch the ZetaSQL analyzer (apt-get install npm)"; exit 1; }
	rm -rf $(BIN)/zetasql-tmp && mkdir -p $(BIN)/zetasql-tmp
	cd $(BIN)/zetasql-tmp && npm pack --silent --cache $(BIN)/zetasql-tmp/cache @fivetrandevelopers/zetasql@$(ZETASQL_NPM_VERSION) >/dev/null
	echo "$(ZETASQL_NPM_SHA512)  $(BIN)/zetasql-tmp/fivetrandevelopers-zetasql-$(ZETASQL_NPM_VERSION).tgz" | sha512sum -c --quiet
	mkdir -p $(BIN)/zetasql-tmp/out
	tar -xzf $(BIN)/zetasql-tmp/fivetrandevelopers-zetasql-$(ZETASQL_NPM_VERSION).tgz -C $(BIN)/zetasql-tmp/out \
		--strip-components=3 package/lib/zetasql/remote_server.so package/lib/zetasql/protos
	rm -rf $(@D) && mv $(BIN)/zetasql-tmp/out $(@D) && rm -rf $(BIN)/zetasql-tmp
	touch $@

## bench: every benchmark of docs/benchmarks.md (about 20 minutes on 2 idle cores); bench-* run one part
bench: bench-planner bench-iterable bench-worker bench-bigquery bench-rate bench-lists
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
## bench-bigquery: the whole engine in BigQuery mode (bqfake's Storage Read API serving a synthetic plan of
## 1,000,000 added rows), unlimited emulator: worker CPU per 1,000,000 records and peak memory
bench-bigquery: $(TEMPORAL)
	TEMPORAL_CLI=$(TEMPORAL) go test -tags integration -run '^$$' -bench BigQueryWorker -benchtime 1x -timeout 30m ./workflows/
## bench-lists: a list activation subscribing 100,000 entering members at the default 5 subscribe requests/s
bench-lists: $(TEMPORAL)
	TEMPORAL_CLI=$(TEMPORAL) go test -tags integration -run '^$$' -bench ListSubscribeAtTheBudget -benchtime 1x -timeout 30m ./workflows/
## bench-rate: the whole engine on 1,000,000 users at Iterable's 5 bulkUpdate requests/s, then a full resync by a
## new worker process (it starts at the good rate the first run recorded in the run log)
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
