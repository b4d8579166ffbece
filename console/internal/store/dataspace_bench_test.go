package store

import (
	"context"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/shared/testenv"
)

// BenchmarkDatareads: one week of 500 weather stations at 10-minute
// resolution (504,000 readings of 34-byte engine blobs, the size of the
// NREL RMIS engine's), ingested in batches of 5,000, then one
// station-week queries (a bounding box around one station and a week),
// on SQLite and on PostgreSQL in the same run.
//
//	go test -run '^$' -bench Datareads -benchtime 1x ./console/internal/store/
func BenchmarkDatareads(b *testing.B) {
	const stations, perStation, batch = 500, 7 * 24 * 6, 5000
	for _, db := range []string{"sqlite", "postgres"} {
		b.Run("db="+db, func(b *testing.B) {
			for range b.N {
				ctx := context.Background()
				dsn := ""
				if db == "postgres" {
					dsn = testenv.PostgresDB(b)
				}
				s, err := Open(ctx, dsn, b.TempDir(), quiet)
				if err != nil {
					b.Fatal(err)
				}
				if err := s.CreateDataset(ctx, &Dataset{ID: "stations", Owner: "p", Title: "t", Engine: "{}", EngineVersion: 1, Type: "free"}); err != nil {
					b.Fatal(err)
				}
				type station struct{ lat, lon float64 }
				rng := rand.New(rand.NewPCG(1, 2))
				sts := make([]station, stations)
				for i := range sts {
					sts[i] = station{41 + rng.Float64()*2, 0.5 + rng.Float64()*3} // Catalonia
				}
				start := time.Date(2022, 1, 3, 0, 0, 0, 0, time.UTC)
				blob := make([]byte, 34)
				rows := make([]Dataread, 0, batch)
				t0 := time.Now()
				total := 0
				for k := range perStation {
					for i := range sts {
						lat, lon := sts[i].lat, sts[i].lon
						rows = append(rows, Dataread{Dataset: "stations", TimeUS: start.Add(time.Duration(k) * 10 * time.Minute).UnixMicro(), Lat: &lat, Lon: &lon, Blob: blob})
						if len(rows) == batch {
							if err := s.AddDatareads(ctx, "stations", rows, 0); err != nil {
								b.Fatal(err)
							}
							total += len(rows)
							rows = rows[:0]
						}
					}
				}
				if len(rows) > 0 {
					if err := s.AddDatareads(ctx, "stations", rows, 0); err != nil {
						b.Fatal(err)
					}
					total += len(rows)
				}
				ingest := time.Since(t0)
				if err := s.Optimize(ctx); err != nil {
					b.Fatal(err)
				}
				var lat []time.Duration
				for q := range 200 {
					st := sts[(q*37)%stations]
					box := [4]float64{st.lon - 0.0005, st.lat - 0.0005, st.lon + 0.0005, st.lat + 0.0005}
					t1 := time.Now()
					got, err := s.Datareads(ctx, DatareadQuery{Dataset: "stations", SinceUS: start.UnixMicro(),
						UntilUS: start.Add(7 * 24 * time.Hour).UnixMicro(), BBox: &box, Limit: 5000})
					if err != nil {
						b.Fatal(err)
					}
					lat = append(lat, time.Since(t1))
					if len(got) != perStation {
						b.Fatalf("station-week query: %d readings, want %d", len(got), perStation)
					}
				}
				slices.Sort(lat)
				b.ReportMetric(float64(total)/ingest.Seconds(), "ingest-readings/s")
				b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "query-p50-ms")
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "query-p99-ms")
				s.Close()
			}
		})
	}
}
