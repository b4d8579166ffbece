//go:build !wasip1

package cellsdk

import (
	"fmt"
	"os"
	"sync"
	"time"
)

// Host stands in for the agent when a cell's code runs natively, in `go test` on the
// development machine: Emit, Send, Log and Now call it. It does not exist in a wasm build.
type Host interface {
	Emit(stream string, data []byte) int32
	Send(cell string, data []byte) int32
	Log(level Level, msg string)
	Now() int64
}

var (
	hostMu sync.Mutex
	host   Host = stderrHost{}
)

// SetHost installs h for the imports; nil restores the default, which refuses Emit and
// Send with ErrUnsupported, logs to stderr and reads the system clock.
func SetHost(h Host) {
	hostMu.Lock()
	defer hostMu.Unlock()
	if h == nil {
		h = stderrHost{}
	}
	host = h
}

func currentHost() Host {
	hostMu.Lock()
	defer hostMu.Unlock()
	return host
}

// CallInit does what the host's call of cloudskin_init does: runs the registered init
// function with config and returns the ABI result code.
func CallInit(config []byte) int32 { return runInit(config) }

// CallHandle does what the host's call of cloudskin_handle does: decodes the batch,
// runs the registered handler and returns the ABI result code.
func CallHandle(batch []byte) int32 { return runHandle(batch) }

func hostEmit(stream string, data []byte) int32 { return currentHost().Emit(stream, data) }
func hostSend(cell string, data []byte) int32   { return currentHost().Send(cell, data) }
func hostLog(level Level, msg string)           { currentHost().Log(level, msg) }
func hostNow() int64                            { return currentHost().Now() }

type stderrHost struct{}

func (stderrHost) Emit(string, []byte) int32 { return int32(ErrUnsupported) }
func (stderrHost) Send(string, []byte) int32 { return int32(ErrUnsupported) }
func (stderrHost) Log(level Level, msg string) {
	fmt.Fprintf(os.Stderr, "cell %s: %s\n", level, msg)
}
func (stderrHost) Now() int64 { return time.Now().UnixNano() }
