package fleet

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/metrics"
	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/protocol"
	"github.com/cloudskin/cloudskin/shared/testenv"
)

// BenchmarkIntake measures the console's cost per telemetry message (what
// the broker hook runs before each PUBACK: validate, store once, mark the
// node seen) on SQLite and PostgreSQL side by side. A fleet of 1,000 nodes
// sampling every 5 s sends 200 messages/s.
func BenchmarkIntake(b *testing.B) {
	for _, db := range []string{"sqlite", "postgres"} {
		b.Run(db, func(b *testing.B) {
			dsn := ""
			if db == "postgres" {
				dsn = testenv.PostgresDB(b)
			}
			st, err := store.Open(context.Background(), dsn, b.TempDir(), quiet)
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			s := New(Config{Topics: protocol.NewTopics("")}, st, metrics.New(), quiet)
			const nodes = 50
			payloads := make([][][]byte, nodes)
			topics := make([]string, nodes)
			start := time.Now().Add(-time.Hour)
			for n := range nodes {
				name := fmt.Sprintf("edge-%d", n)
				enrollB(b, s, name)
				topics[n] = s.cfg.Topics.Node(name, protocol.LeafTelemetry)
				payloads[n] = make([][]byte, 0, b.N/nodes+1)
			}
			for i := 0; i < b.N; i++ {
				n := i % nodes
				payloads[n] = append(payloads[n], sample(fmt.Sprintf("edge-%d", n), start.Add(time.Duration(i)*time.Millisecond)))
			}
			ctx := context.Background()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				n := i % nodes
				if err := s.Sink(ctx, topics[n], payloads[n][i/nodes]); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

func enrollB(b *testing.B, s *Service, name string) {
	tok, _, err := s.CreateToken(context.Background(), time.Hour, "", "bench")
	if err != nil {
		b.Fatal(err)
	}
	if _, err := s.Enroll(context.Background(), EnrollRequest{Token: tok, Name: name}); err != nil {
		b.Fatal(err)
	}
}
