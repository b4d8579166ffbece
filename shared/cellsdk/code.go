package cellsdk

import (
	"errors"
	"fmt"
)

// ABIVersion is the version of the cell ABI this package implements.
const ABIVersion = 1

// Code is an ABI result code. Negative codes are errors, so a Code is an error value:
// errors.Is(err, cellsdk.ErrRateLimited) works on what Emit returns.
type Code int32

// Codes the host returns from imports (docs/cell-abi.md, "Error codes").
const (
	ErrUnknownStream Code = -1 // emit to an output the cell's spec does not declare
	ErrRateLimited   Code = -2 // output rate limit exhausted; the record was not emitted
	ErrTooLarge      Code = -3 // record larger than the host accepts
	ErrBadPointer    Code = -4 // a pointer/length pair outside the cell's memory
	ErrUnsupported   Code = -5 // the host does not offer this yet
)

// Codes this SDK returns from cloudskin_init and cloudskin_handle. They sit in the
// cell-defined range (-100 and below); the SDK reserves -100 to -199, so a cell's own
// codes (see Fail) should be -200 or lower.
const (
	ErrHandler   Code = -100 // the handler returned an error that carries no code
	ErrBadBatch  Code = -101 // the batch bytes do not decode (a host bug)
	ErrPanic     Code = -102 // the handler or init function panicked
	ErrNoHandler Code = -103 // cloudskin_handle was called but no handler is registered
	ErrInit      Code = -104 // the init function returned an error that carries no code
)

var codeNames = map[Code]string{
	ErrUnknownStream: "unknown stream",
	ErrRateLimited:   "rate limited",
	ErrTooLarge:      "record too large",
	ErrBadPointer:    "bad pointer",
	ErrUnsupported:   "unsupported",
	ErrHandler:       "handler error",
	ErrBadBatch:      "malformed batch",
	ErrPanic:         "panic",
	ErrNoHandler:     "no handler registered",
	ErrInit:          "init failed",
}

func (c Code) Error() string {
	if name, ok := codeNames[c]; ok {
		return fmt.Sprintf("cloudskin: %s (%d)", name, int32(c))
	}
	return fmt.Sprintf("cloudskin: code %d", int32(c))
}

// codeErr maps an import's result to an error: nil for zero or positive results.
func codeErr(rc int32) error {
	if rc >= 0 {
		return nil
	}
	return Code(rc)
}

// codedError is an error with a message for the log and a code for the host.
type codedError struct {
	code Code
	msg  string
}

func (e *codedError) Error() string { return e.msg }
func (e *codedError) Unwrap() error { return e.code }

// Fail returns an error that makes the handler (or init) return code to the host; the
// message is logged at error level. Use codes of -200 and below for the cell's own
// reasons; a non-negative code is replaced by ErrHandler.
func Fail(code Code, format string, args ...any) error {
	if code >= 0 {
		code = ErrHandler
	}
	return &codedError{code: code, msg: fmt.Sprintf(format, args...)}
}

// CodeOf returns the code the host sees for err: 0 for nil, the Code err carries (from
// Fail, or an import error passed on, wrapped or not), and fallback otherwise.
func CodeOf(err error, fallback Code) int32 {
	if err == nil {
		return 0
	}
	var c Code
	if errors.As(err, &c) && c < 0 {
		return int32(c)
	}
	return int32(fallback)
}

// Level is a log level of the host's log import.
type Level int32

const (
	LevelDebug Level = 0
	LevelInfo  Level = 1
	LevelWarn  Level = 2
	LevelError Level = 3
)

func (l Level) String() string {
	switch l {
	case LevelDebug:
		return "debug"
	case LevelInfo:
		return "info"
	case LevelWarn:
		return "warn"
	case LevelError:
		return "error"
	}
	return fmt.Sprintf("level(%d)", int32(l))
}
