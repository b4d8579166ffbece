package cellsdk

import (
	"fmt"
	"time"
)

var (
	handler  func(Batch) error
	initFunc func(config []byte) error
)

// Handle registers the function that handles each batch. Call it from an init function:
// a reactor's main is never run. A later call replaces the handler.
func Handle(h func(Batch) error) { handler = h }

// Init registers a function called once, before the first batch, with the cell's
// config (JSON bytes, possibly empty). An error refuses the start. Optional.
func Init(f func(config []byte) error) { initFunc = f }

// Emit appends one record to the cell's output stream. Errors are Codes:
// ErrUnknownStream, ErrRateLimited (the record was dropped), ErrTooLarge ….
func Emit(stream string, data []byte) error { return codeErr(hostEmit(stream, data)) }

// Send sends bytes to another cell of the same tissue. Hosts return ErrUnsupported
// until the Planner supports it.
func Send(cell string, data []byte) error { return codeErr(hostSend(cell, data)) }

// Log writes one line to the agent's log, tagged with the cell id.
func Log(level Level, msg string) { hostLog(level, msg) }

func Debugf(format string, args ...any) { hostLog(LevelDebug, fmt.Sprintf(format, args...)) }
func Infof(format string, args ...any)  { hostLog(LevelInfo, fmt.Sprintf(format, args...)) }
func Warnf(format string, args ...any)  { hostLog(LevelWarn, fmt.Sprintf(format, args...)) }
func Errorf(format string, args ...any) { hostLog(LevelError, fmt.Sprintf(format, args...)) }

// Now is the host's wall-clock time. Prefer it to time.Now, which goes through WASI.
func Now() time.Time { return time.Unix(0, hostNow()) }

// runInit is cloudskin_init without the memory plumbing.
func runInit(config []byte) (rc int32) {
	if initFunc == nil {
		return 0
	}
	defer recoverTo(&rc, "init")
	return report(initFunc(config), ErrInit, "init")
}

// runHandle is cloudskin_handle without the memory plumbing.
func runHandle(buf []byte) (rc int32) {
	if handler == nil {
		hostLog(LevelError, "cellsdk: batch received but no handler registered (call cellsdk.Handle from init)")
		return int32(ErrNoHandler)
	}
	b, err := DecodeBatch(buf)
	if err != nil {
		hostLog(LevelError, err.Error())
		return int32(ErrBadBatch)
	}
	defer recoverTo(&rc, "handler")
	return report(handler(b), ErrHandler, "handler")
}

func report(err error, fallback Code, what string) int32 {
	if err == nil {
		return 0
	}
	hostLog(LevelError, fmt.Sprintf("%s: %v", what, err))
	return CodeOf(err, fallback)
}

// recoverTo turns a panic into ErrPanic: unrecovered, it would exit the Go runtime and
// the host would see a trap with no reason.
func recoverTo(rc *int32, what string) {
	if p := recover(); p != nil {
		hostLog(LevelError, fmt.Sprintf("%s panicked: %v", what, p))
		*rc = int32(ErrPanic)
	}
}
