package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/cloudskin/cloudskin/shared/testenv"
	wt "github.com/cloudskin/cloudskin/shared/wasmcheck/wasmtest"
)

// module is what the modules API returns.
type module struct {
	Digest         string `json:"digest"`
	Name           string `json:"name"`
	Size           int64  `json:"size_bytes"`
	ABIVersion     int    `json:"abi_version"`
	MemoryMinPages int64  `json:"memory_min_pages"`
	MemoryMaxPages *int64 `json:"memory_max_pages"`
	Exports        []struct {
		Name string `json:"name"`
		Kind string `json:"kind"`
	} `json:"exports"`
	UploadedBy string `json:"uploaded_by"`
}

// TestModules uploads cell modules as an operator would, fetches them as a
// node would, and refuses what is not a cell. Modules do not touch the
// broker, so it runs on both databases with the embedded broker.
func TestModules(t *testing.T) {
	for _, be := range backends {
		if be.mosquitto {
			continue
		}
		t.Run(be.name, func(t *testing.T) { testModules(t, be) })
	}
}

func testModules(t *testing.T, be backend) {
	c := newConsole(t, be)
	jwt := c.login()
	wasm := wt.Cell(wt.Options{Init: true, Imports: true, MinPages: 2, MaxPages: 64}).Bytes()
	sum := sha256.Sum256(wasm)
	digest := hex.EncodeToString(sum[:])
	bearer := http.Header{"Authorization": {"Bearer " + jwt}}

	var first module
	t.Run("upload", func(t *testing.T) {
		c := c.on(t)
		code, header, raw := c.upload("?name=aggregator", jwt, bytes.NewReader(wasm))
		if code != 201 {
			t.Fatalf("upload: %d %s", code, raw)
		}
		mustUnmarshal(t, raw, &first)
		if first.Digest != digest || first.Name != "aggregator" || first.Size != int64(len(wasm)) || first.ABIVersion != 1 ||
			first.MemoryMinPages != 2 || first.MemoryMaxPages == nil || *first.MemoryMaxPages != 64 || first.UploadedBy != "admin" || len(first.Exports) != 7 {
			t.Fatalf("uploaded %+v", first)
		}
		if loc := header.Get("Location"); loc != "/api/v1/modules/"+digest {
			t.Fatalf("Location %q", loc)
		}
		// The same bytes again: nothing new, the first record back.
		code, _, raw = c.upload("?name=renamed", jwt, bytes.NewReader(wasm))
		var again module
		mustUnmarshal(t, raw, &again)
		if code != 200 || again.Digest != digest || again.Name != "aggregator" {
			t.Fatalf("second upload: %d %s", code, raw)
		}
	})

	t.Run("read", func(t *testing.T) {
		c := c.on(t)
		var list struct {
			Modules []module `json:"modules"`
		}
		c.do("GET", "/api/v1/modules", jwt, nil, 200, &list)
		if len(list.Modules) != 1 || list.Modules[0].Digest != digest {
			t.Fatalf("list %+v", list)
		}
		for _, d := range []string{digest, "sha256:" + digest} {
			var m module
			c.do("GET", "/api/v1/modules/"+d, jwt, nil, 200, &m)
			if m.Digest != digest || m.Name != "aggregator" {
				t.Fatalf("GET %s: %+v", d, m)
			}
		}
	})

	t.Run("download", func(t *testing.T) {
		c := c.on(t)
		node := c.enroll(jwt, "edge-wasm")
		asNode := http.Header{}
		asNode.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(node.Node+":"+node.Credential)))
		for who, h := range map[string]http.Header{"node": asNode, "user": bearer} {
			code, header, raw := c.send("GET", "/api/v1/modules/"+digest+"/wasm", h, nil)
			got := sha256.Sum256(raw)
			if code != 200 || hex.EncodeToString(got[:]) != digest {
				t.Fatalf("download as %s: %d, %d bytes with sha256 %x", who, code, len(raw), got)
			}
			if ct := header.Get("Content-Type"); ct != "application/wasm" {
				t.Fatalf("Content-Type %q", ct)
			}
			if et, dg := header.Get("ETag"), header.Get("Digest"); et != `"`+digest+`"` || dg != "sha-256="+base64.StdEncoding.EncodeToString(sum[:]) {
				t.Fatalf("ETag %q, Digest %q", et, dg)
			}
		}
		// An agent that has the module already is told so.
		h := asNode.Clone()
		h.Set("If-None-Match", `"`+digest+`"`)
		if code, _, raw := c.send("GET", "/api/v1/modules/"+digest+"/wasm", h, nil); code != 304 || len(raw) != 0 {
			t.Fatalf("If-None-Match: %d, %d bytes", code, len(raw))
		}
		wrong := http.Header{}
		wrong.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(node.Node+":not-the-credential")))
		if code, _, _ := c.send("GET", "/api/v1/modules/"+digest+"/wasm", wrong, nil); code != 401 {
			t.Fatalf("wrong node credential: %d", code)
		}
		// A node credential is for fetching, not for uploading or listing.
		if code, _, _ := c.send("GET", "/api/v1/modules", asNode, nil); code != 401 {
			t.Fatalf("node listing modules: %d", code)
		}
		h = asNode.Clone()
		h.Set("Content-Type", "application/wasm")
		if code, _, _ := c.send("POST", "/api/v1/modules", h, bytes.NewReader(wasm)); code != 401 {
			t.Fatalf("node uploading: %d", code)
		}
	})

	t.Run("large", func(t *testing.T) {
		// Just under the 32 MiB limit passes the route's own limit, far
		// beyond the 1 MiB every other route keeps.
		c := c.on(t)
		m := wt.Cell(wt.Options{})
		m.Custom("padding", make([]byte, 32<<20-1024))
		big := m.Bytes()
		if len(big) > 32<<20 {
			t.Fatalf("fixture is %d bytes", len(big))
		}
		if code, _, raw := c.upload("", jwt, hideLen{bytes.NewReader(big)}); code != 201 {
			t.Fatalf("%d-byte module: %d %s", len(big), code, testenv.Tail(string(raw), 300))
		}
	})

	huge := wt.Cell(wt.Options{})
	huge.MemoryLimits([]byte{0, 0x81, 0x80, 0x04}) // 65537 pages
	badImport := &wt.Module{}
	badImport.ImportFunc("env", "abort", nil, nil)
	badImport.Export("memory", wt.KindMemory, 0)
	badImport.Memory(1, -1)
	tooBig := append(bytes.Clone(wasm), make([]byte, 32<<20)...)
	wasmHeader := http.Header{"Content-Type": {"application/wasm"}, "Authorization": {"Bearer " + jwt}}
	withCT := func(ct string) http.Header {
		h := bearer.Clone()
		if ct != "" {
			h.Set("Content-Type", ct)
		}
		return h
	}
	for _, tc := range []struct {
		name, method, path string
		header             http.Header
		body               []byte
		chunked            bool
		code               int
		msg                string
	}{
		{name: "not wasm", method: "POST", path: "/api/v1/modules", header: wasmHeader, body: []byte("#!/bin/sh\nrm -rf /\n"), code: 400, msg: "not a WebAssembly binary"},
		{name: "empty", method: "POST", path: "/api/v1/modules", header: wasmHeader, code: 400, msg: "not a WebAssembly binary"},
		{name: "truncated", method: "POST", path: "/api/v1/modules", header: wasmHeader, body: wasm[:len(wasm)-5], code: 400, msg: "malformed"},
		{name: "missing exports", method: "POST", path: "/api/v1/modules", header: wasmHeader,
			body: wt.Cell(wt.Options{Skip: map[string]bool{"cloudskin_handle": true, "cloudskin_alloc": true}}).Bytes(),
			code: 400, msg: "missing required export cloudskin_alloc, cloudskin_handle"},
		{name: "bad import", method: "POST", path: "/api/v1/modules", header: wasmHeader, body: badImport.Bytes(), code: 400, msg: "import env.abort is not allowed"},
		{name: "huge memory", method: "POST", path: "/api/v1/modules", header: wasmHeader, body: huge.Bytes(), code: 400, msg: "65537 pages"},
		{name: "bad name", method: "POST", path: "/api/v1/modules?name=../../etc", header: wasmHeader, body: wasm, code: 400, msg: "name"},
		{name: "json content type", method: "POST", path: "/api/v1/modules", header: withCT("application/json"), body: wasm, code: 415, msg: "application/wasm"},
		{name: "no content type", method: "POST", path: "/api/v1/modules", header: withCT(""), body: wasm, code: 415, msg: "application/wasm"},
		{name: "multipart", method: "POST", path: "/api/v1/modules", header: withCT("multipart/form-data; boundary=x"), body: wasm, code: 415, msg: "application/wasm"},
		{name: "too large", method: "POST", path: "/api/v1/modules", header: wasmHeader, body: tooBig, code: 413, msg: "32 MiB"},
		{name: "too large chunked", method: "POST", path: "/api/v1/modules", header: wasmHeader, body: tooBig, chunked: true, code: 413, msg: "32 MiB"},
		{name: "other routes keep 1 MiB", method: "POST", path: "/api/v1/enroll", header: withCT("application/json"), body: bytes.Repeat([]byte(" "), 2<<20), chunked: true, code: 413},
		{name: "unauthenticated upload", method: "POST", path: "/api/v1/modules", header: http.Header{"Content-Type": {"application/wasm"}}, body: wasm, code: 401},
		{name: "unauthenticated list", method: "GET", path: "/api/v1/modules", code: 401},
		{name: "unauthenticated download", method: "GET", path: "/api/v1/modules/" + digest + "/wasm", code: 401},
		{name: "unknown digest", method: "GET", path: "/api/v1/modules/" + strings.Repeat("0", 64), header: bearer, code: 404},
		{name: "unknown digest bytes", method: "GET", path: "/api/v1/modules/" + strings.Repeat("0", 64) + "/wasm", header: bearer, code: 404},
		{name: "bad digest", method: "GET", path: "/api/v1/modules/latest", header: bearer, code: 400, msg: "digest"},
		{name: "uppercase digest", method: "GET", path: "/api/v1/modules/" + strings.ToUpper(digest) + "/wasm", header: bearer, code: 400, msg: "digest"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := c.on(t)
			var body io.Reader
			if tc.body != nil {
				body = bytes.NewReader(tc.body)
				if tc.chunked {
					body = hideLen{body}
				}
			}
			code, header, raw := c.send(tc.method, tc.path, tc.header, body)
			if code != tc.code {
				t.Fatalf("%s %s: %d, want %d: %s", tc.method, tc.path, code, tc.code, testenv.Tail(string(raw), 300))
			}
			if msg := apiErr(t, header, raw); !strings.Contains(msg, tc.msg) {
				t.Fatalf("error %q does not say %q", msg, tc.msg)
			}
		})
	}

	t.Run("nothing refused was kept", func(t *testing.T) {
		c := c.on(t)
		var list struct {
			Modules []module `json:"modules"`
		}
		c.do("GET", "/api/v1/modules", jwt, nil, 200, &list)
		if len(list.Modules) != 2 {
			t.Fatalf("%d modules after the refusals, want the two uploaded", len(list.Modules))
		}
		if c.proc.Exited() {
			t.Fatalf("console exited:\n%s", testenv.Tail(c.proc.Out.String(), 4000))
		}
	})
}

// upload posts a module as application/wasm; query starts with "?" or is empty.
func (c *consoleEnv) upload(query, jwt string, body io.Reader) (int, http.Header, []byte) {
	c.t.Helper()
	h := http.Header{"Content-Type": {"application/wasm"}}
	if jwt != "" {
		h.Set("Authorization", "Bearer "+jwt)
	}
	return c.send("POST", "/api/v1/modules"+query, h, body)
}

func mustUnmarshal(t *testing.T, raw []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(raw, v); err != nil {
		t.Fatalf("decode %s: %v", testenv.Tail(string(raw), 300), err)
	}
}
