//go:build wasip1

package cellsdk

import (
	"fmt"
	"runtime"
	"unsafe"
)

// The exports of the ABI. The Go toolchain (1.24+) honours //go:wasmexport in any
// package linked into a -buildmode=c-shared wasip1 module, so cells get them by
// importing this package.

//go:wasmexport cloudskin_abi_version
func abiVersion() int32 { return ABIVersion }

// maxAlloc bounds one allocation. Go cannot report an allocation failure (running out
// of memory is fatal), so refuse obviously impossible sizes with 0 as the ABI asks.
const maxAlloc = 1 << 30

// buffers keeps what cloudskin_alloc handed out reachable until cloudskin_free: the
// host holds the only other reference, which the Go GC cannot see.
var buffers = map[uintptr][]byte{}

//go:wasmexport cloudskin_alloc
func alloc(size int32) unsafe.Pointer {
	if size < 0 || size > maxAlloc {
		return nil
	}
	buf := make([]byte, max(size, 1)) // a zero-size buffer still needs a distinct address
	p := unsafe.Pointer(unsafe.SliceData(buf))
	buffers[uintptr(p)] = buf[:size]
	return p
}

//go:wasmexport cloudskin_free
func free(ptr unsafe.Pointer, size int32) {
	buf, ok := buffers[uintptr(ptr)]
	if !ok {
		hostLog(LevelWarn, fmt.Sprintf("cellsdk: free of unknown buffer %#x", uintptr(ptr)))
		return
	}
	if int(size) != len(buf) {
		hostLog(LevelWarn, fmt.Sprintf("cellsdk: free of buffer %#x with size %d, allocated %d", uintptr(ptr), size, len(buf)))
	}
	delete(buffers, uintptr(ptr))
}

// buffer returns the allocation at ptr, checked to hold n bytes. (0, 0) is the empty
// buffer, so a host may skip the allocation for empty input.
func buffer(ptr unsafe.Pointer, n int32) ([]byte, bool) {
	if ptr == nil && n == 0 {
		return nil, true
	}
	buf, ok := buffers[uintptr(ptr)]
	if !ok || n < 0 || int(n) > len(buf) {
		return nil, false
	}
	return buf[:n:n], true
}

//go:wasmexport cloudskin_init
func cloudskinInit(ptr unsafe.Pointer, n int32) int32 {
	cfg, ok := buffer(ptr, n)
	if !ok {
		hostLog(LevelError, fmt.Sprintf("cellsdk: init config %#x+%d is not a buffer from cloudskin_alloc", uintptr(ptr), n))
		return int32(ErrBadPointer)
	}
	return runInit(cfg)
}

//go:wasmexport cloudskin_handle
func cloudskinHandle(ptr unsafe.Pointer, n int32) int32 {
	buf, ok := buffer(ptr, n)
	if !ok {
		hostLog(LevelError, fmt.Sprintf("cellsdk: batch %#x+%d is not a buffer from cloudskin_alloc", uintptr(ptr), n))
		return int32(ErrBadPointer)
	}
	return runHandle(buf)
}

// The imports of the ABI, module "cloudskin".

//go:wasmimport cloudskin emit
func importEmit(streamPtr unsafe.Pointer, streamLen uint32, dataPtr unsafe.Pointer, dataLen uint32) int32

//go:wasmimport cloudskin send
func importSend(cellPtr unsafe.Pointer, cellLen uint32, dataPtr unsafe.Pointer, dataLen uint32) int32

//go:wasmimport cloudskin log
func importLog(level int32, msgPtr unsafe.Pointer, msgLen uint32)

//go:wasmimport cloudskin now
func importNow() int64

func hostEmit(stream string, data []byte) int32 {
	rc := importEmit(unsafe.Pointer(unsafe.StringData(stream)), uint32(len(stream)),
		unsafe.Pointer(unsafe.SliceData(data)), uint32(len(data)))
	runtime.KeepAlive(stream)
	runtime.KeepAlive(data)
	return rc
}

func hostSend(cell string, data []byte) int32 {
	rc := importSend(unsafe.Pointer(unsafe.StringData(cell)), uint32(len(cell)),
		unsafe.Pointer(unsafe.SliceData(data)), uint32(len(data)))
	runtime.KeepAlive(cell)
	runtime.KeepAlive(data)
	return rc
}

func hostLog(level Level, msg string) {
	importLog(int32(level), unsafe.Pointer(unsafe.StringData(msg)), uint32(len(msg)))
	runtime.KeepAlive(msg)
}

func hostNow() int64 { return importNow() }
