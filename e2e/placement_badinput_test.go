package e2e

import (
	"bytes"
	"encoding/base64"
	"net/http"
	"strings"
	"testing"
)

// TestPlacementBadInput: apps, migrations, decisions and checkpoints refuse
// malformed, hostile and unauthorized requests with the right code, and
// the console keeps serving.
func TestPlacementBadInput(t *testing.T) {
	c := newConsole(t, backends[0])
	jwt := c.login()
	e1 := c.enroll(jwt, "edge-1")
	e2 := c.enroll(jwt, "edge-2")
	mod := uploadModule(t, c, jwt, "minimal", watModule(t, "../cells/minimal.wat"))
	c.do("POST", "/api/v1/cells", jwt, map[string]any{"id": "pinned", "node": "edge-1", "module": mod, "inputs": []any{}}, 201, nil)
	bearer := http.Header{"Authorization": {"Bearer " + jwt}, "Content-Type": {"application/json"}}
	basic := func(node, secret string) http.Header {
		return http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(node+":"+secret))},
			"X-Checkpoint-Seq": {"1"}, "X-Checkpoint-Reason": {"periodic"}}
	}
	app := func(body string) string { return body }
	cases := []struct {
		name, method, path string
		header             http.Header
		body               string
		want               int
	}{
		{"app: not JSON", "POST", "/api/v1/apps", bearer, `{"name":`, 400},
		{"app: unknown field", "POST", "/api/v1/apps", bearer, app(`{"name":"a","cells":[],"evil":1}`), 400},
		{"app: no cells", "POST", "/api/v1/apps", bearer, `{"name":"a","cells":[]}`, 400},
		{"app: bad name", "POST", "/api/v1/apps", bearer, `{"name":"A/../b","cells":[{"name":"x","module":"` + mod + `","inputs":[]}]}`, 400},
		{"app: unknown module", "POST", "/api/v1/apps", bearer, `{"name":"a","cells":[{"name":"x","module":"` + strings.Repeat("0", 64) + `","inputs":[]}]}`, 400},
		{"app: too many replicas", "POST", "/api/v1/apps", bearer, `{"name":"a","replicas":100000,"cells":[{"name":"x","module":"` + mod + `","inputs":[]}]}`, 400},
		{"app: bad arch", "POST", "/api/v1/apps", bearer, `{"name":"a","constraints":{"arch":"sparc"},"cells":[{"name":"x","module":"` + mod + `","inputs":[]}]}`, 400},
		{"app: bad point", "POST", "/api/v1/apps", bearer, `{"name":"a","constraints":{"point":{"lat":91,"lon":0}},"cells":[{"name":"x","module":"` + mod + `","inputs":[]}]}`, 400},
		{"app: cell id taken by a hand-placed cell", "POST", "/api/v1/apps", bearer, `{"name":"pinned","cells":[],"replicas":1}`, 400},
		{"app: unknown", "GET", "/api/v1/apps/nope", bearer, "", 404},
		{"app: PUT name mismatch", "PUT", "/api/v1/apps/one", bearer, `{"name":"two","cells":[{"name":"x","module":"` + mod + `","inputs":[]}]}`, 400},
		{"app: no token", "POST", "/api/v1/apps", http.Header{"Content-Type": {"application/json"}}, `{}`, 401},
		{"migrate: unknown cell", "POST", "/api/v1/cells/nope/migrate", bearer, `{"to":"edge-2"}`, 404},
		{"migrate: to its own node", "POST", "/api/v1/cells/pinned/migrate", bearer, `{"to":"edge-1"}`, 400},
		{"migrate: bad node name", "POST", "/api/v1/cells/pinned/migrate", bearer, `{"to":"Edge_2"}`, 400},
		{"migrate: unknown node", "POST", "/api/v1/cells/pinned/migrate", bearer, `{"to":"edge-9"}`, 404},
		{"migrate: offline node (the Planner says why)", "POST", "/api/v1/cells/pinned/migrate", bearer, `{"to":"edge-2"}`, 422},
		{"migrate: node credential", "POST", "/api/v1/cells/pinned/migrate", basic("edge-1", e1.Credential), `{"to":"edge-2"}`, 401},
		{"decisions: bad limit", "GET", "/api/v1/decisions?limit=0", bearer, "", 400},
		{"decisions: bad before", "GET", "/api/v1/decisions?before=x", bearer, "", 400},
		{"moves: unknown", "GET", "/api/v1/moves/nope", bearer, "", 404},
		{"checkpoint: no credential", "PUT", "/api/v1/cells/pinned/checkpoints/c1", http.Header{}, "data", 401},
		{"checkpoint: wrong secret", "PUT", "/api/v1/cells/pinned/checkpoints/c1", basic("edge-1", "wrong"), "data", 401},
		{"checkpoint: another node's cell", "PUT", "/api/v1/cells/pinned/checkpoints/c1", basic("edge-2", e2.Credential), "data", 403},
		{"checkpoint: bad id", "PUT", "/api/v1/cells/pinned/checkpoints/..evil", basic("edge-1", e1.Credential), "data", 400},
		{"checkpoint: bad reason", "PUT", "/api/v1/cells/pinned/checkpoints/c1", func() http.Header {
			h := basic("edge-1", e1.Credential)
			h.Set("X-Checkpoint-Reason", "because")
			return h
		}(), "data", 400},
		{"checkpoint: no seq", "PUT", "/api/v1/cells/pinned/checkpoints/c1", func() http.Header {
			h := basic("edge-1", e1.Credential)
			h.Del("X-Checkpoint-Seq")
			return h
		}(), "data", 400},
		{"checkpoint: unknown cell", "PUT", "/api/v1/cells/nope/checkpoints/c1", basic("edge-1", e1.Credential), "data", 404},
		{"checkpoint read: another node", "GET", "/api/v1/cells/pinned/checkpoints/c1", basic("edge-2", e2.Credential), "", 403},
		{"checkpoint read: unknown", "GET", "/api/v1/cells/pinned/checkpoints/c9", bearer, "", 404},
		{"stream records: another node's stream, no cell reads it", "GET", "/api/v1/nodes/edge-1/streams/sensors/records", basic("edge-2", e2.Credential), "", 403},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, raw := c.sendText(tc.method, tc.path, tc.header, tc.body)
			if code != tc.want || !bytes.Contains(raw, []byte(`"error"`)) {
				t.Fatalf("%s %s: %d %s, want %d with an error", tc.method, tc.path, code, raw, tc.want)
			}
		})
	}
	// A valid checkpoint from the cell's own node is stored, and a retry of
	// the same id is accepted; the console still serves.
	for range 2 {
		code, _, raw := c.send("PUT", "/api/v1/cells/pinned/checkpoints/c1", basic("edge-1", e1.Credential), strings.NewReader("checkpoint bytes"))
		if code != 201 {
			t.Fatalf("valid checkpoint: %d %s", code, raw)
		}
	}
	var list struct {
		Checkpoints []struct {
			ID    string `json:"id"`
			Bytes int64  `json:"bytes"`
		} `json:"checkpoints"`
	}
	c.do("GET", "/api/v1/cells/pinned/checkpoints", jwt, nil, 200, &list)
	if len(list.Checkpoints) != 1 || list.Checkpoints[0].Bytes != int64(len("checkpoint bytes")) {
		t.Fatalf("checkpoints %+v", list)
	}
	code, _, raw := c.send("GET", "/api/v1/cells/pinned/checkpoints/c1", basic("edge-1", e1.Credential), nil)
	if code != 200 || string(raw) != "checkpoint bytes" {
		t.Fatalf("read back: %d %q", code, raw)
	}
}
