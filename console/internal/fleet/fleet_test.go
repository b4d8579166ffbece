package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cloudskin/cloudskin/console/internal/broker"
	"github.com/cloudskin/cloudskin/console/internal/metrics"
	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func newService(t *testing.T) (*Service, *metrics.Metrics) {
	t.Helper()
	st, err := store.Open(context.Background(), "", t.TempDir(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	m := metrics.New()
	return New(Config{Topics: protocol.NewTopics(""), BrokerURL: "tcp://127.0.0.1:1883"}, st, m, quiet), m
}

func enroll(t *testing.T, s *Service, name string) string {
	t.Helper()
	tok, _, err := s.CreateToken(context.Background(), time.Hour, "", "test")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := s.Enroll(context.Background(), EnrollRequest{Token: tok, Name: name, Labels: map[string]string{"site": "a"}})
	if err != nil {
		t.Fatal(err)
	}
	return resp.Credential
}

func sample(node string, at time.Time) []byte {
	b, _ := json.Marshal(protocol.Telemetry{Node: node, Time: at, CPU: protocol.CPU{Percent: 10},
		Energy: protocol.Energy{Source: protocol.EnergyModel, PowerW: 20}})
	return b
}

func TestSinkRefusesBadInput(t *testing.T) {
	s, m := newService(t)
	ctx := context.Background()
	enroll(t, s, "edge-1")
	tp := s.cfg.Topics
	now := time.Now().UTC()
	good := sample("edge-1", now)
	if err := s.Sink(ctx, tp.Node("edge-1", protocol.LeafTelemetry), good); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, topic, reason string
		payload             []byte
	}{
		{"malformed", tp.Node("edge-1", protocol.LeafTelemetry), metrics.RejectTelemetryMalformed, []byte("{not json")},
		{"oversized", tp.Node("edge-1", protocol.LeafTelemetry), metrics.RejectTelemetryOversized, []byte(`{"x":"` + strings.Repeat("a", protocol.MaxTelemetryBytes) + `"}`)},
		{"other node in payload", tp.Node("edge-1", protocol.LeafTelemetry), metrics.RejectTelemetryInvalid, sample("edge-2", now.Add(time.Second))},
		{"unknown node", tp.Node("ghost", protocol.LeafTelemetry), metrics.RejectUnknownNode, sample("ghost", now)},
		{"unknown leaf", tp.Node("edge-1", "secrets"), metrics.RejectUnknownTopic, []byte("{}")},
		{"not a node topic", "cloudskin/v1/console", metrics.RejectUnknownTopic, []byte("{}")},
		{"bad status", tp.Node("edge-1", protocol.LeafStatus), metrics.RejectStatusInvalid, []byte(`{"node":"edge-1","state":"asleep"}`)},
		{"malformed actual", tp.Node("edge-1", protocol.LeafActual), metrics.RejectActualInvalid, []byte(`{"node":"edge-1","cells":{}}`)},
		{"actual of another node", tp.Node("edge-1", protocol.LeafActual), metrics.RejectActualInvalid, []byte(`{"node":"edge-2","cells":[]}`)},
		{"actual without cell id", tp.Node("edge-1", protocol.LeafActual), metrics.RejectActualInvalid, []byte(`{"node":"edge-1","cells":[{"state":"running"}]}`)},
		{"oversized actual", tp.Node("edge-1", protocol.LeafActual), metrics.RejectActualInvalid, []byte(`{"node":"edge-1","x":"` + strings.Repeat("a", MaxActualBytes) + `"}`)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := testutil.ToFloat64(m.Rejected.WithLabelValues(tc.reason))
			err := s.Sink(ctx, tc.topic, tc.payload)
			if !errors.Is(err, ErrInvalid) || errors.Is(err, broker.ErrRetry) {
				t.Fatalf("Sink = %v, want a permanent refusal", err)
			}
			if got := testutil.ToFloat64(m.Rejected.WithLabelValues(tc.reason)); got != before+1 {
				t.Fatalf("%s counter %v → %v", tc.reason, before, got)
			}
		})
	}
	got, err := s.Telemetry(ctx, "edge-1", now.Add(-time.Minute), now.Add(time.Minute), 100)
	if err != nil || len(got) != 1 {
		t.Fatalf("stored %d samples (%v): bad input must not be stored, the good one must stay", len(got), err)
	}
}

func TestSinkStoresOnceAndTracksLiveness(t *testing.T) {
	s, m := newService(t)
	ctx := context.Background()
	enroll(t, s, "edge-1")
	tp := s.cfg.Topics
	now := time.Now().UTC().Truncate(time.Microsecond)
	for range 3 { // the same sample three times: a back-fill re-send
		if err := s.Sink(ctx, tp.Node("edge-1", protocol.LeafTelemetry), sample("edge-1", now)); err != nil {
			t.Fatal(err)
		}
	}
	if stored, dup := testutil.ToFloat64(m.SamplesStored), testutil.ToFloat64(m.SamplesDuplicate); stored != 1 || dup != 2 {
		t.Fatalf("stored %v duplicates %v, want 1 and 2", stored, dup)
	}
	n, _ := s.Node(ctx, "edge-1")
	if n.Status != protocol.StateOnline || n.LastTelemetry == nil || !n.LastTelemetry.Time.Equal(now) {
		t.Fatalf("node after telemetry: %+v", n)
	}
	will, _ := json.Marshal(protocol.Status{Node: "edge-1", State: protocol.StateOffline})
	if err := s.Sink(ctx, tp.Node("edge-1", protocol.LeafStatus), will); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.Node(ctx, "edge-1"); n.Status != protocol.StateOffline || n.StatusReason != "last will" {
		t.Fatalf("after last will: %s (%s)", n.Status, n.StatusReason)
	}
	hb, _ := json.Marshal(protocol.Status{Node: "edge-1", State: protocol.StateOnline, HeartbeatSeconds: 2, Arch: "arm64",
		Labels: map[string]string{"site": "b", "power": "green"}})
	if err := s.Sink(ctx, tp.Node("edge-1", protocol.LeafStatus), hb); err != nil {
		t.Fatal(err)
	}
	n, _ = s.Node(ctx, "edge-1")
	if n.Status != protocol.StateOnline || n.HeartbeatSeconds != 2 || n.Arch != "arm64" || n.Labels["power"] != "green" {
		t.Fatalf("after heartbeat: %+v", n)
	}
}

func TestEnrollValidation(t *testing.T) {
	s, _ := newService(t)
	ctx := context.Background()
	cred := enroll(t, s, "edge-1")
	if !s.AuthenticateNode(ctx, "edge-1", cred) || s.AuthenticateNode(ctx, "edge-1", cred+"x") || s.AuthenticateNode(ctx, "ghost", cred) {
		t.Fatal("node authentication is wrong")
	}
	tok, _, _ := s.CreateToken(ctx, time.Hour, "", "test")
	for _, req := range []EnrollRequest{
		{Token: tok, Name: ReservedBrokerUser},
		{Token: tok, Name: "Bad_Name"},
		{Token: tok, Name: "n", Labels: map[string]string{"lat": "91"}},
		{Token: tok, Name: "n", Labels: map[string]string{"power": "diesel"}},
		{Token: tok, Name: "n", Labels: map[string]string{"Upper": "x"}},
		{Token: tok, Name: "n", Arch: strings.Repeat("x", 40)},
	} {
		if _, err := s.Enroll(ctx, req); !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: %v, want ErrInvalid", req, err)
		}
	}
	// The refusals above did not spend the token.
	if _, err := s.Enroll(ctx, EnrollRequest{Token: tok, Name: "edge-2"}); err != nil {
		t.Fatalf("token spent by invalid requests: %v", err)
	}
	if _, _, err := s.CreateToken(ctx, 0, "", "test"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("zero ttl: %v", err)
	}
}
