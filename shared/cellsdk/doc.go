// Package cellsdk is what a cell author imports: it implements the cell side of the
// CloudSkin cell ABI v1 (docs/cell-abi.md) so a cell is a plain Go package main that
// registers a handler.
//
// A cell is built as a WASI preview1 reactor:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o cell.wasm ./mycell
//
// In a reactor main is never called: the host runs _initialize, which runs package
// init functions, so register the handler from init:
//
//	func init() {
//		cellsdk.Init(configure) // optional
//		cellsdk.Handle(handle)
//	}
//
//	func main() {}
//
// The batch encoding and the error codes are plain Go that builds everywhere: the agent
// reuses EncodeBatch, and the decoder is tested on the host. Only the exports and the
// host imports are wasip1-specific. On other platforms the imports go to a Host a test
// installs with SetHost, so a cell's logic can be unit-tested without a wasm runtime.
package cellsdk
