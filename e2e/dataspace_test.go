package e2e

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// rmisEngine stores three of the NREL RMIS station's columns compactly.
const rmisEngine = `{"name":"rmis","version":1,"fields":[
 {"name":"temp","type":"int16","unit":"°C","scale":0.01},
 {"name":"rh","type":"uint16","unit":"%","scale":0.01},
 {"name":"wind","type":"int16","unit":"m/s","scale":0.001}]}`

type rmisRow struct {
	Time           time.Time
	Temp, RH, Wind float64
}

func rmisRows(t *testing.T) []rmisRow {
	t.Helper()
	f, err := os.Open("testdata/nrel_rmis_weather_5min_2022-01.csv")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	mst := time.FixedZone("MST", -7*3600)
	var out []rmisRow
	for _, r := range recs[1:] {
		ts, err := time.ParseInLocation("1/2/2006 15:04", r[0], mst)
		if err != nil || r[1] == "" {
			continue // the station's empty rows
		}
		num := func(s string) float64 { v, _ := strconv.ParseFloat(s, 64); return v }
		out = append(out, rmisRow{ts, num(r[1]), num(r[8]), num(r[12])})
	}
	return out
}

// TestDatasetIngestAndQuery: a provider publishes a dataset with an engine,
// ingests real weather readings (a reading without the required location,
// or one the engine cannot store, is refused and counted), and reads them
// back decoded by time range and bounding box, as JSON and CSV, page by
// page; other users cannot see it.
func TestDatasetIngestAndQuery(t *testing.T) {
	for _, be := range backends[:2] { // SQLite and PostgreSQL
		t.Run(be.name, func(t *testing.T) { datasetFlow(t, be) })
	}
}

func datasetFlow(t *testing.T, be backend) {
	c := newConsole(t, be)
	admin := c.login()
	for _, u := range []map[string]any{
		{"username": "nrel", "password": "provider-password", "role": "provider", "profile": map[string]any{"nationality": "US", "sector": "research", "org_type": "governmental"}},
		{"username": "other-prov", "password": "provider-password", "role": "provider", "profile": map[string]any{"nationality": "ES", "sector": "agriculture", "org_type": "private"}},
		{"username": "reader", "password": "consumer-password", "role": "consumer", "profile": map[string]any{"nationality": "ES", "sector": "agriculture", "org_type": "private"}},
	} {
		c.do("POST", "/api/v1/users", admin, u, 201, nil)
	}
	login := func(user, pw string) string {
		var r struct{ Token string }
		c.do("POST", "/api/v1/auth/login", "", map[string]string{"username": user, "password": pw}, 200, &r)
		return r.Token
	}
	prov, other, reader := login("nrel", "provider-password"), login("other-prov", "provider-password"), login("reader", "consumer-password")
	var ds struct {
		ID    string
		Owner string
	}
	c.do("POST", "/api/v1/datasets", prov, map[string]any{"id": "rmis-golden", "title": "NREL RMIS, Golden CO, 5 min",
		"engine": json.RawMessage(rmisEngine), "type": "rental", "price_cents": 500, "license": "public", "location_required": true}, 201, &ds)
	if ds.Owner != "nrel" {
		t.Fatalf("dataset %+v", ds)
	}
	rows := rmisRows(t)
	lat, lon := 39.742, -105.179
	type in struct {
		Time    time.Time      `json:"time"`
		Lat     *float64       `json:"lat,omitempty"`
		Lon     *float64       `json:"lon,omitempty"`
		Reading map[string]any `json:"reading"`
	}
	var batch []in
	for _, r := range rows {
		batch = append(batch, in{r.Time, &lat, &lon, map[string]any{"temp": r.Temp, "rh": r.RH, "wind": r.Wind, "station": "RMIS"}})
	}
	// Two bad ones: no location, and a temperature an int16 of 0.01 °C cannot hold.
	batch = append(batch, in{rows[0].Time, nil, nil, map[string]any{"temp": 1.0, "rh": 1.0, "wind": 1.0}})
	batch = append(batch, in{rows[0].Time, &lat, &lon, map[string]any{"temp": 500.0, "rh": 1.0, "wind": 1.0}})
	accepted := 0
	for i := 0; i < len(batch); i += 500 {
		var res struct {
			Accepted int
			Rejected []struct {
				Index int
				Error string
			}
		}
		c.do("POST", "/api/v1/datasets/rmis-golden/datareads", prov, map[string]any{"datareads": batch[i:min(i+500, len(batch))]}, 200, &res)
		accepted += res.Accepted
		for _, r := range res.Rejected {
			if !strings.Contains(r.Error, "location") && !strings.Contains(r.Error, "temp") {
				t.Errorf("rejection %+v", r)
			}
		}
	}
	if accepted != len(rows) {
		t.Fatalf("accepted %d of %d good readings", accepted, len(rows))
	}
	var view struct{ Readings, Rejected int }
	c.do("GET", "/api/v1/datasets/rmis-golden", prov, nil, 200, &view)
	if view.Readings != len(rows) || view.Rejected != 2 {
		t.Fatalf("dataset counts %+v", view)
	}

	// One day, page by page, decoded and equal to the input within the scale.
	day := rows[0].Time.Add(24 * time.Hour)
	want := map[int64]rmisRow{}
	for _, r := range rows {
		if !r.Time.Before(day) && r.Time.Before(day.Add(24*time.Hour)) {
			want[r.Time.UnixMicro()] = r
		}
	}
	got := 0
	for after := ""; ; {
		var page struct {
			Datareads []struct {
				Time    time.Time
				Lat     float64
				Reading struct{ Temp, RH, Wind float64 }
			}
			Next string
		}
		path := fmt.Sprintf("/api/v1/datasets/rmis-golden/datareads?since=%s&until=%s&bbox=-106,39,-105,40&limit=100&after=%s",
			day.UTC().Format(time.RFC3339), day.Add(24*time.Hour).UTC().Format(time.RFC3339), after)
		c.do("GET", path, prov, nil, 200, &page)
		for _, d := range page.Datareads {
			w, ok := want[d.Time.UnixMicro()]
			if !ok || math.Abs(d.Reading.Temp-w.Temp) > 0.005 || math.Abs(d.Reading.RH-w.RH) > 0.005 || math.Abs(d.Reading.Wind-w.Wind) > 0.0005 || d.Lat != lat {
				t.Fatalf("read back %+v, sent %+v", d, w)
			}
			got++
		}
		if page.Next == "" {
			break
		}
		after = page.Next
	}
	if got != len(want) {
		t.Fatalf("read %d readings of the day, want %d", got, len(want))
	}
	// A box elsewhere holds nothing; CSV has a header and a row per reading.
	var empty struct{ Datareads []any }
	c.do("GET", "/api/v1/datasets/rmis-golden/datareads?bbox=1,41,2,42", prov, nil, 200, &empty)
	if len(empty.Datareads) != 0 {
		t.Fatalf("readings outside the box: %d", len(empty.Datareads))
	}
	code, _, raw := c.send("GET", "/api/v1/datasets/rmis-golden/datareads?limit=3&format=csv", http.Header{"Authorization": {"Bearer " + prov}}, nil)
	if code != 200 || !strings.HasPrefix(string(raw), "id,time,lat,lon,temp,rh,wind\n") || strings.Count(string(raw), "\n") != 4 {
		t.Fatalf("csv: %d %q", code, raw)
	}
	// Nobody else sees it yet (contracts come next); bad queries are 400.
	for _, tc := range []struct {
		tok, path string
		want      int
	}{
		{other, "/api/v1/datasets/rmis-golden/datareads", 404},
		{other, "/api/v1/datasets/rmis-golden", 404},
		{reader, "/api/v1/datasets/rmis-golden/datareads", 403},
		{prov, "/api/v1/datasets/rmis-golden/datareads?bbox=1,2,3", 400},
		{prov, "/api/v1/datasets/rmis-golden/datareads?bbox=10,0,5,0", 400},
		{prov, "/api/v1/datasets/rmis-golden/datareads?since=yesterday", 400},
		{prov, "/api/v1/datasets/rmis-golden/datareads?limit=100000", 400},
		{prov, "/api/v1/datasets/rmis-golden/datareads?after=1%27%20OR%201=1", 400},
		{prov, "/api/v1/datasets/rmis-golden/datareads?format=xml", 400},
		{prov, "/api/v1/datasets/nope", 404},
	} {
		if code, _, raw := c.send("GET", tc.path, http.Header{"Authorization": {"Bearer " + tc.tok}}, nil); code != tc.want {
			t.Errorf("GET %s: %d %s, want %d", tc.path, code, raw, tc.want)
		}
	}
	for name, body := range map[string]string{
		"bad engine type":   `{"id":"x","title":"x","type":"free","engine":{"fields":[{"name":"a","type":"int9"}]}}`,
		"free with a price": `{"id":"x","title":"x","type":"free","price_cents":5,"engine":` + rmisEngine + `}`,
		"bad id":            `{"id":"X/../y","title":"x","type":"free","engine":` + rmisEngine + `}`,
	} {
		code, _, raw := c.send("POST", "/api/v1/datasets", http.Header{"Authorization": {"Bearer " + prov}, "Content-Type": {"application/json"}}, strings.NewReader(body))
		if code != 400 {
			t.Errorf("%s: %d %s", name, code, raw)
		}
	}
	if code, _, _ := c.send("POST", "/api/v1/datasets", http.Header{"Authorization": {"Bearer " + reader}, "Content-Type": {"application/json"}}, strings.NewReader(`{}`)); code != 403 {
		t.Errorf("a consumer creating a dataset: %d", code)
	}
}
