package cells

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// Module is a validated, compiled cell module. It may be started any number of times,
// concurrently. Close it once no Cell is being started from it.
type Module struct {
	Digest    string // hex sha256 of the module bytes as referenced (before the rewrite)
	FromCache bool   // compiled code came from the cache

	mod           *wasmtime.Module // compiled from the rewritten module (rewrite.go)
	memMinBytes   uint64
	hasInitialize bool
	hasInit       bool
	usesWASI      bool     // imports wasi_snapshot_preview1: needs a WASI context and stdio
	snap          snapInfo // its mutable globals, or why its cells cannot be snapshotted
}

// Close releases the compiled code.
func (m *Module) Close() {
	if m.mod != nil {
		m.mod.Close()
		m.mod = nil
	}
}

// requiredExports are the function exports of ABI v1 with their signatures; optional ones
// are checked only when present.
var (
	requiredExports = map[string]string{
		"cloudskin_abi_version": "()->(i32)",
		"cloudskin_alloc":       "(i32)->(i32)",
		"cloudskin_free":        "(i32,i32)->()",
		"cloudskin_handle":      "(i32,i32)->(i32)",
	}
	optionalExports = map[string]string{
		"_initialize":    "()->()",
		"cloudskin_init": "(i32,i32)->(i32)",
	}
)

// normalizeDigest accepts "<hex>" or "sha256:<hex>".
func normalizeDigest(d string) string {
	return strings.ToLower(strings.TrimPrefix(d, "sha256:"))
}

// Load verifies the module against its digest, rewrites it so that snapshots can reach its
// mutable globals (rewrite.go), compiles it (or takes compiled code from the cache) and
// checks it against the cell ABI. The errors wrap ErrDigest, ErrInvalidModule or ErrABI.
func (r *Runtime) Load(wasm []byte, digest string) (*Module, error) {
	sum := sha256.Sum256(wasm)
	hexSum := hex.EncodeToString(sum[:])
	if normalizeDigest(digest) != hexSum {
		return nil, fmt.Errorf("%w: expected %s, module hashes to %s", ErrDigest, digest, hexSum)
	}
	// No separate validation: a miss compiles (which validates), and a cache entry exists
	// only for a digest whose bytes compiled, so on a hit these very bytes are known good.
	if m := r.fromCache(hexSum); m != nil {
		return m, nil
	}
	rewritten, snap, err := rewriteModule(wasm)
	if err != nil {
		return nil, err
	}
	mod, err := wasmtime.NewModule(r.engine, rewritten)
	if err != nil && len(rewritten) != len(wasm) {
		// Say what is wrong with the bytes the author sent (offsets and all). Should the
		// rewrite itself have broken a valid module, run it as it came, without snapshots.
		if verr := wasmtime.ModuleValidate(r.engine, wasm); verr != nil {
			err = verr
		} else if mod, err = wasmtime.NewModule(r.engine, wasm); err == nil {
			r.log.Error("cells: rewritten module does not compile; loading it unchanged", "module", hexSum)
			snap = snapInfo{refusal: "the host could not rewrite the module to reach its globals"}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidModule, err)
	}
	m := &Module{Digest: hexSum, mod: mod, snap: snap}
	if err := m.check(); err != nil {
		m.Close()
		return nil, err
	}
	if r.cacheDir != "" {
		r.cacheMisses.Add(1)
		path := r.cachePath(hexSum)
		if err := r.writeCache(path, m); err != nil {
			// A cache we cannot write costs a recompile next time, nothing more.
			r.log.Warn("cells: cannot write compiled-code cache", "path", path, "err", err)
		}
	}
	return m, nil
}

// LoadCached loads a module from the compiled-code cache alone, by digest, without its wasm
// bytes: what an agent does for the modules it already ran, after a restart. It returns an
// error wrapping ErrNotCached when the cache holds no sound entry; the caller then reads the
// module and calls Load. A cache entry is only ever written for bytes that hashed to the
// digest and compiled, so it needs no second digest check.
func (r *Runtime) LoadCached(digest string) (*Module, error) {
	hexSum := normalizeDigest(digest)
	if !validHexDigest(hexSum) {
		return nil, fmt.Errorf("%w: %q is not a sha256 digest", ErrDigest, digest)
	}
	if m := r.fromCache(hexSum); m != nil {
		return m, nil
	}
	return nil, fmt.Errorf("%w: %s", ErrNotCached, hexSum)
}

func validHexDigest(s string) bool {
	if len(s) != 2*sha256.Size {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

func (r *Runtime) cachePath(hexSum string) string {
	return filepath.Join(r.cacheDir, fmt.Sprintf("%s-%s-%s-%s.cwasm", hexSum, wasmtimeVersion, runtime.GOOS, runtime.GOARCH))
}

// A compiled-code cache file is wasmtime's serialized code of the rewritten module followed
// by a trailer:
//
//	abi facts | length of the facts (4) | CRC-32C of code, facts and length (4) | magic (8)
//	facts = minimum memory u64 | flags u8 | globals u32, (index u32, type u8) each |
//	        refusal length u16, refusal (why the cells cannot be snapshotted; UTF-8)
//
// all little endian. An entry is written only for a module that compiled and passed the ABI
// check, and the facts are what that check and the rewrite found, so a hit skips both:
// walking a module's exports and imports through the C API costs more than mapping its code
// (21 of 75 µs for the minimal cell). The digest in the file name is that of the module as
// referenced, before the rewrite.
//
// wasmtime would map a damaged file (power loss on flash, bit rot) as native code, so a file
// failing the CRC — or that wasmtime refuses — is deleted and recompiled. CRC-32C, not a
// cryptographic hash, because it guards against decay, not an attacker (whoever can write
// the 0700 cache dir can replace the agent), and it runs in hardware on amd64 and arm64:
// ≈7 GB/s here against sha256's 1.6 GB/s, 2 ms instead of 8 ms for a Go cell's 13 MB of code.
//
// CSKCRC02 files hold code compiled before the rewrite (no global exports): they fail the
// magic check and are recompiled once.
const cacheMagic = "CSKCRC03"

const (
	cacheTrailer  = 4 + 4 + len(cacheMagic) // after the facts
	maxCacheFacts = 64 << 20
	maxRefusal    = 1024
)

const (
	factInitialize = 1 << iota
	factInit
	factWASI
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func (m *Module) facts() []byte {
	b := binary.LittleEndian.AppendUint64(nil, m.memMinBytes)
	var flags byte
	if m.hasInitialize {
		flags |= factInitialize
	}
	if m.hasInit {
		flags |= factInit
	}
	if m.usesWASI {
		flags |= factWASI
	}
	b = append(b, flags)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(m.snap.globals)))
	for _, g := range m.snap.globals {
		b = binary.LittleEndian.AppendUint32(b, g.index)
		b = append(b, byte(g.kind))
	}
	refusal := m.snap.refusal
	if len(refusal) > maxRefusal {
		refusal = refusal[:maxRefusal]
	}
	b = binary.LittleEndian.AppendUint16(b, uint16(len(refusal)))
	return append(b, refusal...)
}

var errCacheFacts = errors.New("malformed facts")

func (m *Module) setFacts(b []byte) error {
	if len(b) < 8+1+4 {
		return errCacheFacts
	}
	m.memMinBytes = binary.LittleEndian.Uint64(b)
	m.hasInitialize, m.hasInit, m.usesWASI = b[8]&factInitialize != 0, b[8]&factInit != 0, b[8]&factWASI != 0
	n := binary.LittleEndian.Uint32(b[9:])
	b = b[13:]
	if uint64(n)*5+2 > uint64(len(b)) {
		return errCacheFacts
	}
	m.snap.globals = make([]snapGlobal, n)
	for i := range m.snap.globals {
		g := snapGlobal{index: binary.LittleEndian.Uint32(b), kind: valKind(b[4])}
		if !g.kind.capturable() || (i > 0 && g.index <= m.snap.globals[i-1].index) {
			return errCacheFacts
		}
		m.snap.globals[i] = g
		b = b[5:]
	}
	if int(binary.LittleEndian.Uint16(b)) != len(b)-2 {
		return errCacheFacts
	}
	m.snap.refusal = string(b[2:])
	return nil
}

// appendCacheTrailer appends the facts and the trailer to compiled code.
func appendCacheTrailer(code, facts []byte) []byte {
	code = append(code, facts...)
	code = binary.LittleEndian.AppendUint32(code, uint32(len(facts)))
	code = binary.LittleEndian.AppendUint32(code, crc32.Checksum(code, castagnoli))
	return append(code, cacheMagic...)
}

// fromCache maps a sound cache entry; nil on a miss. wasmtime's serialized format locates
// its sections by offset, so it maps the file in place with the trailer after it (a file it
// refused would cost one recompile, never a wrong load: the trailer is checked first).
func (r *Runtime) fromCache(hexSum string) *Module {
	if r.cacheDir == "" {
		return nil
	}
	path := r.cachePath(hexSum)
	facts, err := checkCacheFile(path)
	m := &Module{Digest: hexSum, FromCache: true}
	if err == nil {
		// The CRC held, so facts that do not parse were written wrong: recompile.
		err = m.setFacts(facts)
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		r.log.Warn("cells: compiled-code cache entry unusable, recompiling", "path", path, "err", err)
	default:
		if m.mod, err = wasmtime.NewModuleDeserializeFile(r.engine, path); err == nil {
			r.cacheHits.Add(1)
			return m
		}
		r.log.Warn("cells: compiled-code cache entry refused, recompiling", "path", path, "err", err)
	}
	os.Remove(path)
	return nil
}

var errCacheCorrupt = errors.New("trailer or checksum does not match")

// checkCacheFile verifies a cache file's trailer and returns its ABI facts. A large file is
// checked over a read-only mapping, so the check copies nothing and leaves the pages in the
// page cache for wasmtime's own mapping; a small one is read, which costs fewer syscalls.
func checkCacheFile(path string) ([]byte, error) {
	var facts []byte
	err := withContents(path, func(b []byte) {
		if f, ok := checkCacheBytes(b); ok {
			facts = bytes.Clone(f)
		}
	})
	if err == nil && facts == nil {
		err = errCacheCorrupt
	}
	return facts, err
}

func checkCacheBytes(b []byte) ([]byte, bool) {
	if len(b) < cacheTrailer {
		return nil, false
	}
	n := len(b) - cacheTrailer + 4 // code, facts and their length
	tail := b[n-4:]
	facts := int64(binary.LittleEndian.Uint32(tail))
	if string(tail[8:]) != cacheMagic || facts > maxCacheFacts || facts > int64(n-4) ||
		binary.LittleEndian.Uint32(tail[4:]) != crc32.Checksum(b[:n], castagnoli) {
		return nil, false
	}
	return b[n-4-int(facts) : n-4], true
}

// writeCache writes atomically: temp file, fsync, rename.
func (r *Runtime) writeCache(path string, m *Module) error {
	code, err := m.mod.Serialize()
	if err != nil {
		return err
	}
	code = appendCacheTrailer(code, m.facts())
	f, err := os.CreateTemp(r.cacheDir, ".tmp-*.cwasm")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(code)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// kindName names a value type. wasmtime-go's ValKind.String panics on kinds it
// does not know (v128 and newer reference types), which FuzzLoad found.
func kindName(k wasmtime.ValKind) string {
	switch k {
	case wasmtime.KindI32:
		return "i32"
	case wasmtime.KindI64:
		return "i64"
	case wasmtime.KindF32:
		return "f32"
	case wasmtime.KindF64:
		return "f64"
	case wasmtime.KindFuncref:
		return "funcref"
	case wasmtime.KindExternref:
		return "externref"
	default:
		return fmt.Sprintf("kind%d", uint8(k))
	}
}

func sigOf(ft *wasmtime.FuncType) string {
	kinds := func(vs []*wasmtime.ValType) string {
		s := make([]string, len(vs))
		for i, v := range vs {
			s[i] = kindName(v.Kind())
		}
		return strings.Join(s, ",")
	}
	return "(" + kinds(ft.Params()) + ")->(" + kinds(ft.Results()) + ")"
}

// check validates the module's exports and imports against ABI v1 and collects every
// problem into one error.
func (m *Module) check() error {
	var problems []string
	seen := map[string]bool{}
	memOK := false
	for _, e := range m.mod.Exports() {
		name := e.Name()
		ty := e.Type()
		if name == "memory" {
			mt := ty.MemoryType()
			switch {
			case mt == nil:
				problems = append(problems, "export memory is not a memory")
			case mt.Is64() || mt.IsShared():
				problems = append(problems, "export memory must be a 32-bit unshared memory")
			default:
				memOK = true
				m.memMinBytes = mt.Minimum() * 65536
			}
			continue
		}
		want, req := requiredExports[name]
		if !req {
			var opt bool
			if want, opt = optionalExports[name]; !opt {
				continue
			}
		}
		ft := ty.FuncType()
		if ft == nil {
			problems = append(problems, fmt.Sprintf("export %s is not a function", name))
			continue
		}
		if got := sigOf(ft); got != want {
			problems = append(problems, fmt.Sprintf("export %s has signature %s, want %s", name, got, want))
			continue
		}
		seen[name] = true
	}
	var missing []string
	if !memOK && !hasProblemAbout(problems, "memory") {
		missing = append(missing, "memory")
	}
	for name := range requiredExports {
		if !seen[name] && !hasProblemAbout(problems, name) {
			missing = append(missing, name)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		problems = append(problems, "missing exports: "+strings.Join(missing, ", "))
	}
	m.hasInitialize, m.hasInit = seen["_initialize"], seen["cloudskin_init"]
	if memOK && m.memMinBytes > uint64(MaxMemoryBytes) {
		return fmt.Errorf("%w: module declares a minimum linear memory of %d bytes, above the host maximum of %d bytes", ErrLimit, m.memMinBytes, MaxMemoryBytes)
	}

	for _, imp := range m.mod.Imports() {
		mod, name := imp.Module(), ""
		if n := imp.Name(); n != nil {
			name = *n
		}
		ft := imp.Type().FuncType()
		switch {
		case mod == "cloudskin":
			want, ok := hostImports[name]
			if !ok {
				problems = append(problems, fmt.Sprintf("import cloudskin.%s is not provided by the host", name))
			} else if ft == nil || sigOf(ft) != want {
				got := "a non-function"
				if ft != nil {
					got = sigOf(ft)
				}
				problems = append(problems, fmt.Sprintf("import cloudskin.%s has signature %s, want %s", name, got, want))
			}
		case mod == "wasi_snapshot_preview1":
			m.usesWASI = true
			if ft == nil {
				problems = append(problems, fmt.Sprintf("import wasi_snapshot_preview1.%s is not a function", name))
			}
		default:
			problems = append(problems, fmt.Sprintf("import %s.%s is not allowed (only cloudskin.{emit,send,log,now} and wasi_snapshot_preview1.*)", mod, name))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %s", ErrABI, strings.Join(problems, "; "))
	}
	return nil
}

func hasProblemAbout(problems []string, name string) bool {
	for _, p := range problems {
		if strings.HasPrefix(p, "export "+name+" ") {
			return true
		}
	}
	return false
}
