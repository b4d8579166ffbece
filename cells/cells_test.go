package cells_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"
	"golang.org/x/sync/errgroup"

	"github.com/cloudskin/cloudskin/shared/cellsdk"
)

var goCells = []string{"aggregator", "threshold", "transform", "ndvi"}

var (
	buildOnce sync.Once
	built     map[string][]byte
	buildErr  error
)

// buildCells builds every Go cell for wasip1 once per test binary, in parallel.
func buildCells(t *testing.T) map[string][]byte {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "cells")
		if err != nil {
			buildErr = err
			return
		}
		defer os.RemoveAll(dir)
		var mu sync.Mutex
		built = map[string][]byte{}
		var g errgroup.Group
		for _, name := range goCells {
			g.Go(func() error {
				out := filepath.Join(dir, name+".wasm")
				cmd := exec.Command("go", "build", "-buildmode=c-shared", "-trimpath", "-ldflags=-s -w", "-o", out, "./"+name)
				cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
				if msg, err := cmd.CombinedOutput(); err != nil {
					return fmt.Errorf("build %s: %v\n%s", name, err, msg)
				}
				b, err := os.ReadFile(out)
				mu.Lock()
				built[name] = b
				mu.Unlock()
				return err
			})
		}
		buildErr = g.Wait()
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return built
}

func TestGoCellsHaveTheABI(t *testing.T) {
	for name, wasm := range buildCells(t) {
		t.Run(name, func(t *testing.T) {
			if !bytes.HasPrefix(wasm, []byte("\x00asm\x01\x00\x00\x00")) {
				t.Fatalf("not a wasm module: % x", wasm[:8])
			}
			m, err := wasmtime.NewModule(wasmtime.NewEngine(), wasm)
			if err != nil {
				t.Fatal(err)
			}
			exports := map[string]bool{}
			for _, e := range m.Exports() {
				exports[e.Name()] = true
			}
			for _, want := range []string{"memory", "_initialize", "cloudskin_abi_version", "cloudskin_alloc", "cloudskin_free", "cloudskin_init", "cloudskin_handle"} {
				if !exports[want] {
					t.Errorf("missing export %s", want)
				}
			}
			if exports["_start"] {
				t.Error("exports _start: built as a command, not a reactor")
			}
			for _, i := range m.Imports() {
				if i.Module() != "cloudskin" && i.Module() != "wasi_snapshot_preview1" {
					t.Errorf("imports %s.%s", i.Module(), *i.Name())
				}
			}
			t.Logf("%s.wasm: %d bytes", name, len(wasm))
		})
	}
}

// cell is one instance run the way the agent runs it, with the imports recorded.
type cell struct {
	t       *testing.T
	store   *wasmtime.Store
	inst    *wasmtime.Instance
	emitted map[string][]string
	logs    []string
}

func start(t *testing.T, wasm []byte, config string) *cell {
	t.Helper()
	engine := wasmtime.NewEngine()
	m, err := wasmtime.NewModule(engine, wasm)
	if err != nil {
		t.Fatal(err)
	}
	c := &cell{t: t, store: wasmtime.NewStore(engine), emitted: map[string][]string{}}
	c.store.SetWasi(wasmtime.NewWasiConfig())
	l := wasmtime.NewLinker(engine)
	if err := l.DefineWasi(); err != nil {
		t.Fatal(err)
	}
	read := func(caller *wasmtime.Caller, p, n int32) []byte {
		mem := caller.GetExport("memory").Memory().UnsafeData(caller)
		return bytes.Clone(mem[p : p+n])
	}
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(l.FuncWrap("cloudskin", "emit", func(caller *wasmtime.Caller, sp, sl, dp, dl int32) int32 {
		stream := string(read(caller, sp, sl))
		if stream != "aggregates" && stream != "alerts" && stream != "encoded" && stream != "ndvi" && stream != "count" {
			return int32(cellsdk.ErrUnknownStream)
		}
		c.emitted[stream] = append(c.emitted[stream], string(read(caller, dp, dl)))
		return 0
	}))
	must(l.FuncWrap("cloudskin", "send", func(int32, int32, int32, int32) int32 { return int32(cellsdk.ErrUnsupported) }))
	must(l.FuncWrap("cloudskin", "log", func(caller *wasmtime.Caller, level, p, n int32) {
		c.logs = append(c.logs, cellsdk.Level(level).String()+" "+string(read(caller, p, n)))
	}))
	must(l.FuncWrap("cloudskin", "now", func() int64 { return time.Now().UnixNano() }))
	if c.inst, err = l.Instantiate(c.store, m); err != nil {
		t.Fatal(err)
	}
	if f := c.inst.GetFunc(c.store, "_initialize"); f != nil {
		if _, err := f.Call(c.store); err != nil {
			t.Fatal(err)
		}
	}
	if v := c.call("cloudskin_abi_version"); v != 1 {
		t.Fatalf("abi version %d", v)
	}
	if c.inst.GetFunc(c.store, "cloudskin_init") != nil {
		if rc := c.withBuffer("cloudskin_init", []byte(config)); rc != 0 {
			t.Fatalf("cloudskin_init = %d, logs %q", rc, c.logs)
		}
	}
	return c
}

func (c *cell) call(name string, args ...any) int32 {
	c.t.Helper()
	v, err := c.inst.GetFunc(c.store, name).Call(c.store, args...)
	if err != nil {
		c.t.Fatalf("%s: %v", name, err)
	}
	if v == nil {
		return 0
	}
	return v.(int32)
}

// withBuffer passes data to fn through cloudskin_alloc/free, as the ABI prescribes.
func (c *cell) withBuffer(fn string, data []byte) int32 {
	c.t.Helper()
	p := c.call("cloudskin_alloc", int32(len(data)))
	if p == 0 {
		c.t.Fatalf("cloudskin_alloc(%d) = 0", len(data))
	}
	copy(c.inst.GetExport(c.store, "memory").Memory().UnsafeData(c.store)[p:], data)
	rc := c.call(fn, p, int32(len(data)))
	c.call("cloudskin_free", p, int32(len(data)))
	return rc
}

func (c *cell) handle(topic string, payloads ...[]byte) int32 {
	c.t.Helper()
	b := cellsdk.Batch{Input: "in"}
	for i, p := range payloads {
		b.Records = append(b.Records, cellsdk.Record{Offset: uint64(i), Time: time.Now(), Topic: topic, Payload: p})
	}
	enc, err := cellsdk.EncodeBatch(b)
	if err != nil {
		c.t.Fatal(err)
	}
	return c.withBuffer("cloudskin_handle", enc)
}

func TestAggregator(t *testing.T) {
	c := start(t, buildCells(t)["aggregator"], "")
	if rc := c.handle("site/a/t2", []byte(`{"sensor":"t1","value":20}`), []byte(`22`), []byte(`{"sensor":"t1","value":24}`), []byte(`oops`)); rc != 0 {
		t.Fatalf("rc %d, logs %q", rc, c.logs)
	}
	want := []string{
		`{"sensor":"t1","count":2,"min":20,"max":24,"mean":22}`,
		`{"sensor":"t2","count":1,"min":22,"max":22,"mean":22}`,
	}
	if got := c.emitted["aggregates"]; strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("emitted\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(c.logs) != 1 || !strings.HasPrefix(c.logs[0], "warn skipping record 3") {
		t.Errorf("logs %q", c.logs)
	}
	c.handle("x/t1", []byte(`30`)) // state survives between batches
	if got := c.emitted["aggregates"][2]; got != `{"sensor":"t1","count":3,"min":20,"max":30,"mean":24.666666666666668}` {
		t.Errorf("second batch emitted %s", got)
	}
}

func TestThreshold(t *testing.T) {
	c := start(t, buildCells(t)["threshold"], `{"field":"temp","above":30,"below":null}`)
	if rc := c.handle("s/t1", []byte(`{"temp":29}`), []byte(`{"temp":31}`), []byte(`{"temp":32}`), []byte(`{"temp":25}`), []byte(`{"sensor":"x","temp":40}`)); rc != 0 {
		t.Fatalf("rc %d, logs %q", rc, c.logs)
	}
	want := `{"sensor":"t1","value":31,"threshold":30,"direction":"above"}` + "\n" + `{"sensor":"x","value":40,"threshold":30,"direction":"above"}`
	if got := strings.Join(c.emitted["alerts"], "\n"); got != want {
		t.Errorf("alerts\n%s\nwant\n%s", got, want)
	}
	t.Run("bad config refuses the start", func(t *testing.T) {
		engine := buildCells(t)["threshold"]
		for _, cfg := range []string{``, `{"above":1,"below":2}`, `{"field":"v"}`, `{"abvoe":1}`} {
			c := start(t, engine, `{"above":1}`) // a good start, then call init again with cfg
			if rc := c.withBuffer("cloudskin_init", []byte(cfg)); rc >= 0 {
				t.Errorf("config %q accepted", cfg)
			}
		}
	})
}

func TestTransform(t *testing.T) {
	c := start(t, buildCells(t)["transform"], `{"fields":[{"name":"temp","type":"int16","scale":0.01},{"name":"on","type":"bool"},{"name":"n","type":"uint64"},{"name":"f","type":"float32","offset":1}]}`)
	rc := c.handle("s/t1", []byte(`{"temp":-21.5,"on":true,"n":18446744073709551615,"f":3}`), []byte(`{"temp":400,"on":true,"n":1,"f":0}`), []byte(`[]`))
	if rc != -200 {
		t.Errorf("rc %d, want -200 for the invalid records", rc)
	}
	want := binary.LittleEndian.AppendUint16(nil, uint16(0xffff&-2150))
	want = append(want, 1)
	want = binary.LittleEndian.AppendUint64(want, 1<<64-1)
	want = binary.LittleEndian.AppendUint32(want, 0x40000000) // float32(2)
	if got := c.emitted["encoded"]; len(got) != 1 || got[0] != string(want) {
		t.Errorf("encoded % x, want % x", got, want)
	}
	logs := strings.Join(c.logs, "\n")
	for _, w := range []string{`field "temp": 400 scales to 40000, outside int16`, "payload is not a JSON object", "2 of 3 records invalid"} {
		if !strings.Contains(logs, w) {
			t.Errorf("logs %q lack %q", c.logs, w)
		}
	}
}

func TestNDVI(t *testing.T) {
	c := start(t, buildCells(t)["ndvi"], "")
	tile := func(w, h uint32, red, nir []uint16) []byte {
		b := binary.LittleEndian.AppendUint32(nil, w)
		b = binary.LittleEndian.AppendUint32(b, h)
		for _, v := range append(red, nir...) {
			b = binary.LittleEndian.AppendUint16(b, v)
		}
		return b
	}
	rc := c.handle("sat/tile", tile(2, 2, []uint16{0, 10, 30, 50}, []uint16{0, 30, 10, 50}), tile(1, 1, []uint16{0}, []uint16{0}), []byte{1, 0, 0, 0, 1, 0, 0, 0, 9})
	if rc != -200 {
		t.Errorf("rc %d, want -200 for the short tile", rc)
	}
	var got []map[string]any
	for _, s := range c.emitted["ndvi"] {
		var m map[string]any
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			t.Fatal(err)
		}
		got = append(got, m)
	}
	if len(got) != 2 || got[0]["min"] != -0.5 || got[0]["max"] != 0.5 || got[0]["mean"] != 0.0 || got[0]["valid_pixels"] != 3.0 || got[0]["width"] != 2.0 {
		t.Errorf("emitted %v", c.emitted["ndvi"])
	}
	if len(got) == 2 && (got[1]["valid_pixels"] != 0.0 || got[1]["mean"] != nil) {
		t.Errorf("empty tile: %v", got[1])
	}
}

func TestMinimalWAT(t *testing.T) {
	src, err := os.ReadFile("minimal.wat")
	if err != nil {
		t.Fatal(err)
	}
	wasm, err := wasmtime.Wat2Wasm(string(src))
	if err != nil {
		t.Fatal(err)
	}
	c := start(t, wasm, "")
	if rc := c.handle("t", []byte("a"), []byte("b"), []byte("c")); rc != 0 {
		t.Fatalf("rc %d", rc)
	}
	payloads := make([][]byte, 1234)
	if rc := c.handle("t", payloads...); rc != 0 {
		t.Fatalf("rc %d", rc)
	}
	if got := strings.Join(c.emitted["count"], ","); got != "3,1234" {
		t.Errorf("emitted %q", got)
	}
	if rc := c.withBuffer("cloudskin_handle", []byte("CSB2xxxxxxxxxxx")); rc != -200 {
		t.Errorf("bad magic: rc %d", rc)
	}
}

func TestHostileWATAssemble(t *testing.T) {
	files, err := filepath.Glob("hostile/*.wat")
	if err != nil || len(files) != 7 {
		t.Fatalf("hostile modules: %v %v", files, err)
	}
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		wasm, err := wasmtime.Wat2Wasm(string(src))
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if err := wasmtime.ModuleValidate(wasmtime.NewEngine(), wasm); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}
