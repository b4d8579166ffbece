package cells

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
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
	Digest    string // hex sha256 of the module bytes
	FromCache bool   // compiled code came from the cache

	mod           *wasmtime.Module
	memMinBytes   uint64
	hasInitialize bool
	hasInit       bool
	usesWASI      bool // imports wasi_snapshot_preview1: needs a WASI context and stdio
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

// Load verifies the module against its digest, compiles it (or takes compiled code from the
// cache) and checks it against the cell ABI. The errors wrap ErrDigest, ErrInvalidModule or
// ErrABI.
func (r *Runtime) Load(wasm []byte, digest string) (*Module, error) {
	sum := sha256.Sum256(wasm)
	hexSum := hex.EncodeToString(sum[:])
	if normalizeDigest(digest) != hexSum {
		return nil, fmt.Errorf("%w: expected %s, module hashes to %s", ErrDigest, digest, hexSum)
	}
	// No separate validation: a miss compiles (which validates), and a cache entry exists
	// only for a digest whose bytes compiled, so on a hit these very bytes are known good.

	mod, fromCache, err := r.compile(wasm, hexSum)
	if err != nil {
		return nil, err
	}
	m := &Module{Digest: hexSum, FromCache: fromCache, mod: mod}
	if err := m.check(); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

func (r *Runtime) cachePath(hexSum string) string {
	return filepath.Join(r.cacheDir, fmt.Sprintf("%s-%s-%s-%s.cwasm", hexSum, wasmtimeVersion, runtime.GOOS, runtime.GOARCH))
}

// compile returns compiled code, from the cache when it holds a sound entry. A cache file
// is the serialized module followed by its own sha256: wasmtime would map a damaged file
// (power loss on flash, bit rot) as native code, so a file failing that check — or that
// wasmtime refuses — is deleted and recompiled.
func (r *Runtime) compile(wasm []byte, hexSum string) (*wasmtime.Module, bool, error) {
	if r.cacheDir == "" {
		mod, err := wasmtime.NewModule(r.engine, wasm)
		if err != nil {
			return nil, false, fmt.Errorf("%w: %v", ErrInvalidModule, err)
		}
		return mod, false, nil
	}
	path := r.cachePath(hexSum)
	if b, err := os.ReadFile(path); err == nil {
		if code, ok := checkCacheFile(b); ok {
			if mod, err := wasmtime.NewModuleDeserialize(r.engine, code); err == nil {
				r.cacheHits.Add(1)
				return mod, true, nil
			} else {
				r.log.Warn("cells: compiled-code cache entry refused, recompiling", "path", path, "err", err)
			}
		} else {
			r.log.Warn("cells: compiled-code cache entry corrupt, recompiling", "path", path)
		}
		os.Remove(path)
	}
	r.cacheMisses.Add(1)
	mod, err := wasmtime.NewModule(r.engine, wasm)
	if err != nil {
		return nil, false, fmt.Errorf("%w: %v", ErrInvalidModule, err)
	}
	if err := r.writeCache(path, mod); err != nil {
		// A cache we cannot write costs a recompile next time, nothing more.
		r.log.Warn("cells: cannot write compiled-code cache", "path", path, "err", err)
	}
	return mod, false, nil
}

func checkCacheFile(b []byte) ([]byte, bool) {
	if len(b) < sha256.Size {
		return nil, false
	}
	code, tail := b[:len(b)-sha256.Size], b[len(b)-sha256.Size:]
	sum := sha256.Sum256(code)
	return code, bytes.Equal(sum[:], tail)
}

// writeCache writes atomically: temp file, fsync, rename.
func (r *Runtime) writeCache(path string, mod *wasmtime.Module) error {
	code, err := mod.Serialize()
	if err != nil {
		return err
	}
	sum := sha256.Sum256(code)
	f, err := os.CreateTemp(r.cacheDir, ".tmp-*.cwasm")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(append(code, sum[:]...))
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
