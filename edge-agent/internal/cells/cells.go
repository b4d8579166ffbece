// Package cells runs CloudSkin cells — WebAssembly modules speaking the cell ABI v1
// (docs/cell-abi.md) — in-process with wasmtime, each in its own store with memory, CPU,
// input-size and output-rate limits.
//
// Every call into a cell gets two bounds: fuel (FuelPerCall, deterministic, counts work) and
// an epoch deadline (CallTimeout, wall clock, catches time spent where fuel is cheap). Either
// one stops the call with ErrFuel or ErrTimeout, and the cell is then dead: see Cell.
package cells

import (
	"errors"
	"fmt"
	"time"
)

// ABIVersion is the only cell ABI version this host speaks.
const ABIVersion = 1

// ABI error codes returned by host imports (docs/cell-abi.md).
const (
	CodeOK             int32 = 0
	CodeUnknownStream  int32 = -1
	CodeRateLimited    int32 = -2
	CodeTooLarge       int32 = -3
	CodeBadPointer     int32 = -4
	CodeUnsupported    int32 = -5
	MaxRecordBytes           = 1 << 20        // largest record emit accepts
	MaxMemoryBytes     int64 = 4<<30 - 64<<10 // hard ceiling: a module declaring the whole 4 GiB wasm32 space is refused
	maxStreamNameBytes       = 255
	maxLogLineBytes          = 4096
)

var (
	// ErrDigest: the module bytes do not hash to the digest they were referenced by.
	ErrDigest = errors.New("cells: module digest mismatch")
	// ErrInvalidModule: the bytes are not a WebAssembly module wasmtime accepts.
	ErrInvalidModule = errors.New("cells: invalid module")
	// ErrNotCached: LoadCached found no sound compiled-code cache entry for the digest.
	ErrNotCached = errors.New("cells: module not in the compiled-code cache")
	// ErrABI: the module does not follow the cell ABI (exports, imports, version).
	ErrABI = errors.New("cells: module does not follow cell ABI v1")
	// ErrLimit: the module or the call does not fit the cell's limits.
	ErrLimit = errors.New("cells: limit exceeded")
	// ErrTrap: the cell trapped (unreachable, out-of-bounds access, stack overflow, exit…).
	ErrTrap = errors.New("cells: cell trapped")
	// ErrFuel: the call used up its fuel (CPU bound per call).
	ErrFuel = errors.New("cells: cell ran out of fuel")
	// ErrTimeout: the call ran past its wall-clock bound.
	ErrTimeout = errors.New("cells: cell call timed out")
	// ErrDead: the cell trapped earlier (or was closed) and takes no more calls; restart it.
	ErrDead = errors.New("cells: cell is not running")
	// ErrAlloc: cloudskin_alloc returned 0 or a buffer outside the cell's memory.
	ErrAlloc = errors.New("cells: cell could not allocate an input buffer")
	// ErrNotMigratable: the cell's module keeps state a snapshot cannot hold (it changes
	// its tables, or has a mutable v128 or reference global); the error says which.
	ErrNotMigratable = errors.New("cells: cell cannot be snapshotted")
	// ErrSnapshot: snapshot bytes that are truncated, corrupted, of another format version,
	// or do not fit the module they are restored into.
	ErrSnapshot = errors.New("cells: invalid snapshot")
)

// HandlerError is a negative result of cloudskin_handle or cloudskin_init: the cell
// reports an error; it keeps running.
type HandlerError struct {
	Code int32
}

func (e *HandlerError) Error() string {
	name := ""
	switch e.Code {
	case CodeUnknownStream:
		name = " (ERR_UNKNOWN_STREAM)"
	case CodeRateLimited:
		name = " (ERR_RATE_LIMITED)"
	case CodeTooLarge:
		name = " (ERR_TOO_LARGE)"
	case CodeBadPointer:
		name = " (ERR_BAD_POINTER)"
	case CodeUnsupported:
		name = " (ERR_UNSUPPORTED)"
	}
	return fmt.Sprintf("cells: handler returned %d%s", e.Code, name)
}

// Limits bound what one cell may use. Zero fields take the defaults below.
type Limits struct {
	MemoryBytes     int64         // maximum linear memory; default 64 MiB, at most MaxMemoryBytes
	FuelPerCall     uint64        // wasm fuel (≈ instructions) per call into the cell; default 500M
	MaxInputBytes   int           // largest encoded batch handed to cloudskin_handle; default 1 MiB
	MaxOutputPerSec float64       // emitted records per second (token bucket, burst = this); default 1000
	CallTimeout     time.Duration // wall-clock bound per call (epoch interruption); default 1s
}

// DefaultLimits are the limits of a cell whose spec sets none.
func DefaultLimits() Limits {
	return Limits{
		MemoryBytes:     64 << 20,
		FuelPerCall:     500_000_000,
		MaxInputBytes:   1 << 20,
		MaxOutputPerSec: 1000,
		CallTimeout:     time.Second,
	}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.MemoryBytes == 0 {
		l.MemoryBytes = d.MemoryBytes
	}
	if l.FuelPerCall == 0 {
		l.FuelPerCall = d.FuelPerCall
	}
	if l.MaxInputBytes == 0 {
		l.MaxInputBytes = d.MaxInputBytes
	}
	if l.MaxOutputPerSec == 0 {
		l.MaxOutputPerSec = d.MaxOutputPerSec
	}
	if l.CallTimeout == 0 {
		l.CallTimeout = d.CallTimeout
	}
	return l
}

// Validate says which field is wrong and why.
func (l Limits) Validate() error {
	switch {
	case l.MemoryBytes < 0 || l.MemoryBytes > MaxMemoryBytes:
		return fmt.Errorf("cells: limits.MemoryBytes %d out of range (0..%d)", l.MemoryBytes, MaxMemoryBytes)
	case l.MaxInputBytes < 0 || l.MaxInputBytes > 1<<30:
		return fmt.Errorf("cells: limits.MaxInputBytes %d out of range (0..1GiB)", l.MaxInputBytes)
	case l.MaxOutputPerSec < 0:
		return fmt.Errorf("cells: limits.MaxOutputPerSec %g must not be negative", l.MaxOutputPerSec)
	case l.CallTimeout < 0:
		return fmt.Errorf("cells: limits.CallTimeout %s must not be negative", l.CallTimeout)
	}
	return nil
}

// Record is one record handed to a cell (see the ABI's batch encoding).
type Record struct {
	Offset  uint64 // position in its input stream
	TimeNS  int64  // ingestion time, Unix nanoseconds
	Topic   string // MQTT topic it arrived on
	Payload []byte
}

// Output receives each record a cell emits. data is a copy the receiver owns. It runs on
// the goroutine calling Handle (inside the cell's call), so it must not block for long.
type Output func(stream string, data []byte)

// Spec says what to run: the cell's identity, its config, its limits and declared outputs.
type Spec struct {
	ID      string
	Config  []byte // passed to cloudskin_init (JSON, may be empty)
	Limits  Limits
	Outputs []string // streams emit may write to; anything else gets ERR_UNKNOWN_STREAM
	// Send carries cloudskin.send to another cell of the tissue (by name)
	// and returns the code the cell gets; nil answers ERR_UNSUPPORTED. It
	// runs inside the cell's call: it must not block.
	Send func(cell string, data []byte) int32
}
