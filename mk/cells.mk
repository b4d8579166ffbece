# Cells: the example Go cells and the hand-written WAT modules, built to wasm.
# Included from the top-level Makefile; uses its GO and BIN when set.
#
#   make cells   →  bin/cells/NAME.wasm for every cells/NAME/main.go (Go, wasip1 reactor)
#                   bin/cells/NAME.wasm for cells/NAME.wat, bin/cells/hostile/NAME.wasm for
#                   cells/hostile/NAME.wat (assembled with cells/internal/wat2wasm)

GO        ?= go
BIN       ?= bin
CELLS_BIN := $(BIN)/cells
WAT2WASM  := $(BIN)/tools/wat2wasm

CELL_GO_NAMES := $(patsubst cells/%/main.go,%,$(wildcard cells/*/main.go))
CELL_WATS     := $(wildcard cells/*.wat cells/hostile/*.wat)
CELLSDK_SRC   := $(wildcard shared/cellsdk/*.go shared/engine/*.go)

CELL_GO_WASM  := $(patsubst %,$(CELLS_BIN)/%.wasm,$(CELL_GO_NAMES))
CELL_WAT_WASM := $(patsubst cells/%.wat,$(CELLS_BIN)/%.wasm,$(CELL_WATS))

.PHONY: cells
cells: $(CELL_GO_WASM) $(CELL_WAT_WASM)

# One rule per Go cell, so each rebuilds when its own sources or the SDK change.
define cell_go_rule
$(CELLS_BIN)/$(1).wasm: $(wildcard cells/$(1)/*.go) $(CELLSDK_SRC) go.mod
	@mkdir -p $$(@D)
	@GOOS=wasip1 GOARCH=wasm $(GO) build -buildmode=c-shared -trimpath -ldflags='-s -w' -o $$@ ./cells/$(1)
	@printf 'cell %-20s %s (%s bytes)\n' '$(1)' '$$@' "$$$$(wc -c < $$@)"
endef
$(foreach c,$(CELL_GO_NAMES),$(eval $(call cell_go_rule,$(c))))

$(CELLS_BIN)/%.wasm: cells/%.wat $(WAT2WASM)
	@mkdir -p $(@D)
	@$(WAT2WASM) -o $@ $<
	@printf 'cell %-20s %s (%s bytes)\n' '$*' '$@' "$$(wc -c < $@)"

$(WAT2WASM): cells/internal/wat2wasm/main.go go.mod
	@mkdir -p $(@D)
	$(GO) build -o $@ ./cells/internal/wat2wasm
