package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cloudskin/cloudskin/edge-agent/internal/cells"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// A checkpoint file round-trips: header (cursors, inbox, tissue state) and
// the cell snapshot, which restores into a running cell.
func TestCheckpointFile(t *testing.T) {
	src, err := os.ReadFile("../../../cells/minimal.wat")
	if err != nil {
		t.Fatal(err)
	}
	wasm, err := wasmtime.Wat2Wasm(string(src))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	rt, err := cells.NewRuntime(t.TempDir(), log)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	digest := sha256Hex(wasm)
	mod, err := rt.Load(wasm, digest)
	if err != nil {
		t.Fatal(err)
	}
	defer mod.Close()
	spec := cells.Spec{ID: "c", Outputs: []string{"count"}}
	cell, err := rt.Start(context.Background(), mod, spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cell.Close()
	snap, err := cell.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	h := &checkpointHeader{ID: "c.1", Cell: "c", Module: digest, Seq: 7, Node: "edge-1", Arch: "amd64", Reason: "hold",
		Cursors: map[string]uint64{"s": 42}, CursorNodes: map[string]string{"s": "edge-9"},
		Inbox:      []inboxRecord{{Input: "in", Offset: 3, Topic: "t", Payload: []byte("x")}, {Input: TissueInput, Offset: 1, Topic: "relay", Payload: []byte("y")}},
		TissueOut:  map[string]*tissueOut{"counter": {Next: 5, Unacked: []protocol.TissueMessage{{From: "c", Seq: 4, Data: []byte("z")}}}},
		TissueSeen: map[string]uint64{"relay": 1},
	}
	var buf bytes.Buffer
	if err := encodeCheckpoint(&buf, h, snap); err != nil {
		t.Fatal(err)
	}
	ck, err := decodeCheckpoint(bytes.NewReader(buf.Bytes()), 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	if ck.Seq != 7 || ck.Cursors["s"] != 42 || ck.CursorNodes["s"] != "edge-9" || len(ck.Inbox) != 2 ||
		ck.TissueOut["counter"].Next != 5 || ck.TissueSeen["relay"] != 1 {
		t.Fatalf("header %+v", ck.checkpointHeader)
	}
	restored, err := rt.Restore(context.Background(), mod, spec, nil, ck.snap)
	if err != nil {
		t.Fatal(err)
	}
	restored.Close()
	// The inbox keeps the inputs the spec has, and tissue messages for a
	// cell of an app.
	q := queueOf(ck.Inbox, protocol.CellSpec{App: "a", Inputs: []protocol.Input{{Name: "in"}}})
	if len(q) != 2 {
		t.Fatalf("inbox for an app cell %+v", q)
	}
	if q := queueOf(ck.Inbox, protocol.CellSpec{Inputs: []protocol.Input{{Name: "other"}}}); len(q) != 0 {
		t.Fatalf("inbox for a cell without those inputs %+v", q)
	}

	// Damaged files are refused with a reason, never a panic.
	b := buf.Bytes()
	huge := append([]byte(checkpointMagic), 0, 0, 0, 0)
	binary.LittleEndian.PutUint32(huge[8:], maxCheckpointHeader+1)
	for name, bad := range map[string][]byte{
		"empty":            nil,
		"bad magic":        append([]byte("NOTACKPT"), b[8:]...),
		"huge header":      huge,
		"truncated header": b[:20],
		"truncated cell":   b[:len(b)-10],
		"header not JSON":  append(append([]byte(checkpointMagic), 3, 0, 0, 0), []byte("{{{")...),
	} {
		if _, err := decodeCheckpoint(bytes.NewReader(bad), 64<<20); err == nil || !strings.Contains(err.Error(), "checkpoint") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := decodeCheckpoint(bytes.NewReader(b), 1<<10); err == nil {
		t.Error("a checkpoint over the memory limit was accepted")
	}
}
