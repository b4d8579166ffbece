package ui

import (
	"net/http"
	"testing"
)

// BenchmarkRender measures the server time of the fleet overview and a
// node's page with 1,000 nodes (each with telemetry; the node with 15 min
// of 5 s samples) in SQLite, beside its peer: the API's JSON for the same
// nodes (GET /api/v1/nodes). The target is < 200 ms a page.
func BenchmarkRender(b *testing.B) {
	f := newFixture(b, 1000, 180)
	for _, bc := range []struct {
		name, path string
		bearer     bool
	}{
		{"ui-fleet-overview", "/ui/fleet", false},
		{"ui-node-page", "/ui/nodes/edge-0000", false},
		{"peer-api-nodes-json", "/api/v1/nodes", true},
		{"peer-api-node-telemetry-json", "/api/v1/nodes/edge-0000/telemetry?since=20m", true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			size := 0
			for b.Loop() {
				rec := f.get(b, bc.path, f.admin, bc.bearer)
				if rec.Code != http.StatusOK {
					b.Fatalf("GET %s: %d %.300s", bc.path, rec.Code, rec.Body.String())
				}
				size = rec.Body.Len()
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/op")
			b.ReportMetric(float64(size)/1024, "KiB/page")
		})
	}
}
