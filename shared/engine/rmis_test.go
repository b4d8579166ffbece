package engine

import (
	"encoding/csv"
	"encoding/json"
	"math"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// rmisEngine is a dataset engine for the NREL RMIS weather station (testdata/SOURCE.txt):
// 5-minute readings, scales picked for each sensor's range and resolution.
const rmisEngine = `{"name":"nrel-rmis-5min","version":1,"fields":[
	{"name":"time","type":"timestamp"},
	{"name":"ambient_temperature","type":"int16","unit":"°C","scale":0.01},
	{"name":"barometric_pressure","type":"uint16","unit":"hPa","scale":0.1},
	{"name":"diffuse_horizontal","type":"int16","unit":"W/m²","scale":0.1},
	{"name":"direct_normal","type":"int16","unit":"W/m²","scale":0.1},
	{"name":"global_horizontal","type":"int16","unit":"W/m²","scale":0.1},
	{"name":"global_normal","type":"int16","unit":"W/m²","scale":0.1},
	{"name":"plane_of_array","type":"int16","unit":"W/m²","scale":0.1},
	{"name":"relative_humidity","type":"uint16","unit":"%","scale":0.01},
	{"name":"uv_a","type":"int16","unit":"W/m²","scale":0.01},
	{"name":"uv_b","type":"int32","unit":"W/m²","scale":0.000001},
	{"name":"wind_direction","type":"int16","unit":"°","scale":0.1},
	{"name":"wind_speed","type":"int16","unit":"m/s","scale":0.001}]}`

// rmisReadings turns the CSV into JSON readings as a sensor would send them: the CSV's
// numbers as written, the station's local time (MST) as RFC 3339. Rows with no values
// (the logger's gap at 23:55 each day) are skipped; it returns how many.
func rmisReadings(t testing.TB) (readings [][]byte, skipped int) {
	t.Helper()
	f, err := os.Open("testdata/nrel_rmis_weather_5min_2022-01.csv")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	mst := time.FixedZone("MST", -7*3600)
	head := rows[0]
	for _, row := range rows[1:] {
		if row[1] == "" {
			skipped++
			continue
		}
		ts, err := time.ParseInLocation("1/2/2006 15:04", row[0], mst)
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		b.WriteString(`{"time":"` + ts.Format(time.RFC3339) + `"`)
		for i, col := range head[1:] {
			name := strings.ToLower(strings.NewReplacer(" ", "_", "-", "_").Replace(col))
			b.WriteString(`,"` + name + `":` + row[i+1])
		}
		b.WriteString("}")
		readings = append(readings, []byte(b.String()))
	}
	return readings, skipped
}

func TestRMIS(t *testing.T) {
	e := mustParse(t, rmisEngine)
	readings, skipped := rmisReadings(t)
	if len(readings) != 1147 || skipped != 4 {
		t.Fatalf("%d readings, %d skipped; want 1147 and 4", len(readings), skipped)
	}
	scale := map[string]float64{}
	for _, f := range e.Fields {
		if f.Scale != nil {
			scale[f.Name] = *f.Scale
		}
	}
	var blobBytes, jsonBytes int
	for _, r := range readings {
		blob, err := e.Encode(r)
		if err != nil {
			t.Fatalf("Encode(%s): %v", r, err)
		}
		blobBytes += len(blob)
		jsonBytes += len(r)
		dec, err := e.Decode(blob)
		if err != nil {
			t.Fatal(err)
		}
		var in, out map[string]any
		if err := json.Unmarshal(r, &in); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(dec, &out); err != nil {
			t.Fatalf("Decode wrote %s: %v", dec, err)
		}
		if len(out) != len(in) {
			t.Fatalf("decoded %d fields, want %d", len(out), len(in))
		}
		t0, _ := time.Parse(time.RFC3339, in["time"].(string))
		t1, err := time.Parse(time.RFC3339, out["time"].(string))
		if err != nil || !t0.Equal(t1) || !strings.HasSuffix(out["time"].(string), "Z") {
			t.Fatalf("time %v → %v (%v)", in["time"], out["time"], err)
		}
		for k, s := range scale {
			v, w := in[k].(float64), out[k].(float64)
			if d := math.Abs(v - w); d > s/2*(1+1e-9) {
				t.Fatalf("%s: %v → %v, off by %g > %g/2\n%s\n%s", k, v, w, d, s, r, dec)
			}
			// Decoded values print no more digits than the scale has.
			if got := strconv.FormatFloat(w, 'f', -1, 64); decimals(w) > decimals(s) {
				t.Fatalf("%s: decoded %s, more digits than scale %v", k, got, s)
			}
		}
	}
	ratio := float64(blobBytes) / float64(jsonBytes)
	t.Logf("%d readings: blob %d bytes each, JSON %.1f bytes on average, blob/JSON %.3f", len(readings), e.Size(), float64(jsonBytes)/float64(len(readings)), ratio)
	if ratio > 0.25 {
		t.Errorf("blob/JSON %.3f, want at most 0.25", ratio)
	}
}
