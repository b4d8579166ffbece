# CloudSkin: one Go module, two binaries.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
BIN      := bin

.PHONY: build run test test-short bench vet fmt clean cells fuzz agent-arm64 images

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/cloudskin-console ./console
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/cloudskin-agent ./edge-agent

# The agent for arm64 nodes, cross-compiled with cgo (wasmtime-go links its
# linux-aarch64 static library). CC here is the arm64 C compiler, whatever CC
# the environment sets for host builds; override it on the command line
# (make agent-arm64 CC=...). Debian: apt-get install gcc-aarch64-linux-gnu
# libc6-dev-arm64-cross; on amd64, run the result with qemu-user-static:
# qemu-aarch64-static -L /usr/aarch64-linux-gnu bin/linux-arm64/cloudskin-agent.
agent-arm64: CC = aarch64-linux-gnu-gcc
agent-arm64:
	CGO_ENABLED=1 GOOS=linux GOARCH=arm64 CC='$(CC)' $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/linux-arm64/cloudskin-agent ./edge-agent

# Edge images (firmware-images/README.md): for amd64 and arm64, the agent
# cross-compiled with cgo, a .deb and a signed OTA bundle, into bin/images/,
# with progress and a summary of sizes. A release: make images VERSION=1.2.3
# with RELEASE_SIGNING_KEY=/path/to/release.key in the environment; without
# it a development key is made in bin/images/dev-keys (never ship what it
# signs). A VERSION that is not major.minor.patch[-suffix] (git describe of an
# untagged tree) builds as 0.0.0-dev.<it>. DEB_COMPRESSION=xz: smaller, slower.
IMAGES_DIR      ?= $(BIN)/images
IMAGES_ARCH     ?= amd64,arm64
ARM64_CC        ?= aarch64-linux-gnu-gcc
DEB_COMPRESSION ?= gzip
images:
	@$(GO) run ./firmware-images/mkimage --version '$(VERSION)' --out '$(IMAGES_DIR)' --arch '$(IMAGES_ARCH)' \
		--cc-arm64 '$(ARM64_CC)' --go '$(GO)' --deb-compression '$(DEB_COMPRESSION)'

# Console + one local agent (edge-1) on embedded defaults; Ctrl-C stops both.
run: build
	@deploy/run-local.sh

# Every test, including the integration tests that start real consoles,
# agents, PostgreSQL (CLOUDSKIN_TEST_POSTGRES_URL) and Mosquitto.
test: vet
	$(GO) test -count=1 -timeout 20m ./...
	@$(MAKE) --no-print-directory fuzz

# Bounded fuzzing of what parses untrusted input: modules (agent loader and
# console check), cell batches, segments, stream records, engine blobs, OTA bundles. Budgets are
# execution counts (about 15 s each on a 2-core machine), not durations: a
# duration-based -fuzztime races Go's fuzz coordinator at the deadline and
# can fail with a bare "context deadline exceeded" and no crasher
# (golang/go#75804, unfixed in Go 1.26). FUZZSCALE multiplies every budget.
FUZZSCALE ?= 1
fuzz = $(GO) test -run '^$$' -fuzz '^$(1)$$' -fuzztime $$(( $(2) * $(FUZZSCALE) ))x $(3)
fuzz:
	$(call fuzz,FuzzLoad,200000,./edge-agent/internal/cells/)
	$(call fuzz,FuzzReadSnapshot,300000,./edge-agent/internal/cells/)
	$(call fuzz,FuzzCheck,600000,./shared/wasmcheck/)
	$(call fuzz,FuzzDecodeBatch,500000,./shared/cellsdk/)
	$(call fuzz,FuzzDecode,200000,./shared/segment/)
	$(call fuzz,FuzzDecodeRecord,250000,./edge-agent/internal/streams/)
	$(call fuzz,FuzzDecode,200000,./shared/engine/)
	$(call fuzz,FuzzVerify,20000,./shared/ota/)

test-short:
	$(GO) test -short -count=1 ./...

# Benchmarks with their peers (nats-server is a peer of the ingest benchmark).
bench:
	command -v nats-server >/dev/null || $(GO) install github.com/nats-io/nats-server/v2@v2.15.2
	$(GO) test -run '^$$' -bench . -benchmem ./...

vet:
	$(GO) vet ./...

fmt:
	gofmt -w .

clean:
	rm -rf $(BIN)

# Example cells (Go → wasip1 reactors, WAT → wasm) into bin/cells/.
include mk/cells.mk
