# fanout: make demo (a real fan-out on an embedded Redis), make test.
GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT    ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo none)
LDFLAGS   := -X github.com/fanout/fanout/internal/cli.Version=$(VERSION) -X github.com/fanout/fanout/internal/cli.Commit=$(COMMIT)
PREFIX    ?= /usr/local

.PHONY: all build demo test test-short vet fmt-check bench sim fuzz install clean

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/fanout-master ./master
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/fanout-minion ./minion

demo:
	$(GO) run ./test/demo

# The whole suite: formatting, vet, unit, protocol, integration tests with the
# race detector. Tests that run redis-server, prlimit or systemd-analyze
# skip when it is not on PATH; set FANOUT_REQUIRE_REDIS=1 (CI does) to fail
# instead.
test: fmt-check vet build
	./deploy/check.sh
	$(GO) test -race -count=1 -timeout 12m ./...

test-short:
	$(GO) test -count=1 -short ./...

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

# The benchmarks, one table on stdout and in bench.md: fan-out end to end on
# the shared testbed (../shared/netbed/netbed.sh: root, network namespaces;
# with aria2c, mktorrent and opentracker for the BitTorrent comparison;
# without namespaces a labelled --bwlimit fallback), one 1 GiB file and
# 100,000 small files against rsync, Redis cost. BENCHFLAGS picks parts,
# rows and sizes (go run ./test/bench -help). Then the micro-benchmarks:
# hashing, Build of a 1 GiB file and of 100,000 small files in formats 2 and
# 3 (on tmpfs), chunking, the streaming verifier, verification of a held
# tree, and what a chain's scripts cost Redis per host. Not run by CI; the
# end-to-end rows alone take 10 to 60 minutes, depending on how often the
# machine is quiet.
BENCHFLAGS ?=
bench: build
	$(GO) run ./test/bench -bin bin -out bench.md $(BENCHFLAGS)
	TMPDIR=$${TMPDIR:-/dev/shm} $(GO) test -run '^$$' -bench . -benchtime 3x ./internal/manifest/
	$(GO) test -run '^$$' -bench . -benchtime 5x ./internal/chunk/
	$(GO) test -run '^$$' -bench Verify -benchtime 5x ./internal/minion/
	$(GO) test -run '^$$' -bench Chain -benchtime 1x ./internal/coord/

# The simulator (test/sim): the real coordination code (minions, master,
# the Lua scripts) for 1,000, 10,000 and 20,000 simulated hosts against a
# real redis-server, transfers modelled by bandwidth; one table on stdout
# and in sim.md. SIMFLAGS picks sizes and flags (go run ./test/sim -help).
# Not run by CI (10,000 hosts take minutes); make test runs a 200-host
# smoke test of it.
SIMFLAGS ?=
sim:
	$(GO) run ./test/sim -out sim.md $(SIMFLAGS)

# Every fuzz target for FUZZTIME each (one target per go test run).
# FUZZMINIMIZE bounds the minimizing of each new interesting input: at Go's
# default of 60s, a target whose inputs run in a millisecond (FuzzChunk,
# FuzzDecode) spent most of its FUZZTIME minimizing and ran few inputs.
FUZZTIME ?= 60s
FUZZMINIMIZE ?= 5s
FUZZ_TARGETS := internal/manifest:FuzzDecode internal/manifest:FuzzValidPath internal/chunk:FuzzChunk \
	internal/peer:FuzzValidPath internal/peer:FuzzParseRange internal/peer:FuzzParseIndices \
	internal/peer:FuzzVerify internal/master:FuzzCleanTask

fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$name ($$pkg) for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./$$pkg/; \
	done

install: build
	install -D -m 0755 bin/fanout-master $(DESTDIR)$(PREFIX)/bin/fanout-master
	install -D -m 0755 bin/fanout-minion $(DESTDIR)$(PREFIX)/bin/fanout-minion

clean:
	rm -rf bin
