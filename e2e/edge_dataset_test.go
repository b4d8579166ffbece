package e2e

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestEdgeToDataset is the dataspace's edge path on real data: NREL RMIS
// weather readings published over MQTT at an agent, turned into the
// dataset engine's binary form by the transform cell, forwarded by the
// agent into the dataset, and read back decoded by a consumer who rents it:
// equal to what was published.
func TestEdgeToDataset(t *testing.T) {
	for _, be := range backends[:2] { // SQLite and PostgreSQL
		t.Run(be.name, func(t *testing.T) { edgeToDataset(t, be) })
	}
}

func edgeToDataset(t *testing.T, be backend) {
	c := newConsole(t, be)
	admin := c.login()
	a := newAgent(t, c, "edge-1", c.token(admin), "")
	waitStatus(t, c, admin, "edge-1", "online", 15*time.Second)
	for name, role := range map[string]string{"station-owner": "provider", "agro-lab": "consumer"} {
		c.do("POST", "/api/v1/users", admin, map[string]any{"username": name, "password": name + "-password", "role": role,
			"profile": map[string]any{"nationality": "ES", "sector": "agriculture", "org_type": "scientific"}}, 201, nil)
	}
	login := func(name string) string {
		var r struct{ Token string }
		c.do("POST", "/api/v1/auth/login", "", map[string]string{"username": name, "password": name + "-password"}, 200, &r)
		return r.Token
	}
	prov, cons := login("station-owner"), login("agro-lab")
	c.do("POST", "/api/v1/datasets", prov, map[string]any{"id": "golden-edge", "title": "RMIS from the edge", "type": "rental",
		"price_cents": 100, "engine": json.RawMessage(rmisEngine), "location_required": true}, 201, nil)

	// The operator deploys the transform cell with the dataset's engine.
	mod := uploadModule(t, c, admin, "transform", exampleCell(t, "transform"))
	c.do("POST", "/api/v1/cells", admin, map[string]any{"id": "to-golden", "node": "edge-1", "module": mod,
		"config": json.RawMessage(rmisEngine), "inputs": []map[string]any{{"name": "weather", "topics": []string{"weather/#"}}},
		"outputs": []string{"encoded"}, "datasets": map[string]string{"encoded": "golden-edge"}}, 201, nil)
	c.waitCellOn(t, c.login(), "to-golden", "edge-1", time.Minute)

	rows := rmisRows(t)[:60]
	lines := make([]string, len(rows))
	for i, r := range rows {
		lines[i] = fmt.Sprintf(`{"station":"RMIS","temp":%v,"rh":%v,"wind":%v}`, r.Temp, r.RH, r.Wind)
	}
	mosquittoPub(t, flagValue(a.args, "--sensors"), "weather/rmis", lines)
	waitFor(t, 60*time.Second, "the readings in the dataset", func() error {
		var d struct{ Readings, Rejected int }
		c.do("GET", "/api/v1/datasets/golden-edge", prov, nil, 200, &d)
		if d.Readings < len(rows) {
			return fmt.Errorf("%d readings, %d rejected", d.Readings, d.Rejected)
		}
		return nil
	})

	var k struct{ ID string }
	c.do("POST", "/api/v1/contracts", cons, map[string]any{"dataset": "golden-edge", "purpose": "research", "end_at": time.Now().Add(time.Hour)}, 201, &k)
	c.do("POST", "/api/v1/contracts/"+k.ID+"/agree", prov, map[string]any{"document": "signed: station-owner"}, 200, nil)
	var page struct {
		Datareads []struct {
			Lat, Lon float64
			Reading  struct{ Temp, RH, Wind float64 }
		}
	}
	c.do("GET", "/api/v1/datasets/golden-edge/datareads?limit=1000", cons, nil, 200, &page)
	if len(page.Datareads) != len(rows) {
		t.Fatalf("read %d readings, published %d", len(page.Datareads), len(rows))
	}
	for i, d := range page.Datareads {
		w := rows[i]
		if math.Abs(d.Reading.Temp-w.Temp) > 0.005 || math.Abs(d.Reading.RH-w.RH) > 0.005 || math.Abs(d.Reading.Wind-w.Wind) > 0.0005 ||
			d.Lat != 41.56 || d.Lon != 1.69 {
			t.Fatalf("reading %d: %+v, published %+v", i, d, w)
		}
	}
	// A node that runs no forwarding cell cannot post into the dataset.
	e := c.enroll(admin, "intruder")
	code, raw := func() (int, []byte) {
		code, _, raw := c.send("POST", "/api/v1/datasets/golden-edge/datareads/blobs", basicHeader("intruder", e.Credential),
			jsonBody(`{"datareads":[{"time":"2022-01-01T00:00:00Z","lat":1,"lon":1,"blob":"AAAAAAAA"}]}`))
		return code, raw
	}()
	if code != 403 {
		t.Fatalf("intruder node: %d %s", code, raw)
	}
}

func basicHeader(user, secret string) http.Header {
	return http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+secret))}, "Content-Type": {"application/json"}}
}

func jsonBody(s string) io.Reader { return strings.NewReader(s) }
