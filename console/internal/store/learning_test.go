package store

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestModelRegistry: versions count up per kind and subject, a ready model
// is served, a not-ready one never is, and rollback serves the previous
// ready version.
func TestModelRegistry(t *testing.T) {
	eachDB(t, func(t *testing.T, db testDB) {
		s := db.open()
		ctx := context.Background()
		add := func(kind, subject, status string) *LearningModel {
			t.Helper()
			m := &LearningModel{Kind: kind, Subject: subject, Status: status, Params: `{"v":1}`, Metrics: `{}`}
			if err := s.AddModel(ctx, m, true); err != nil {
				t.Fatal(err)
			}
			return m
		}
		v1 := add("solar", "edge-1", ModelReady)
		v2 := add("solar", "edge-1", ModelNotReady)
		other := add("solar", "edge-2", ModelReady)
		if v1.Version != 1 || v2.Version != 2 || other.Version != 1 {
			t.Fatalf("versions %d %d %d", v1.Version, v2.Version, other.Version)
		}
		active, err := s.ActiveModels(ctx)
		if err != nil || len(active) != 2 {
			t.Fatalf("active %+v %v", active, err)
		}
		for _, m := range active {
			if m.Subject == "edge-1" && m.Version != 1 {
				t.Fatalf("a not-ready model is served: %+v", m)
			}
			if m.Params == "" {
				t.Fatal("active models come with their parameters")
			}
		}
		if _, err := s.PromoteModel(ctx, v2.ID); !errors.Is(err, ErrNotReady) {
			t.Fatalf("promote not-ready: %v", err)
		}
		v3 := add("solar", "edge-1", ModelReady)
		if !v3.Active {
			t.Fatal("a new ready version is served when asked")
		}
		back, err := s.RollbackModel(ctx, "solar", "edge-1")
		if err != nil || back.ID != v1.ID {
			t.Fatalf("rollback to %+v, %v; want version 1", back, err)
		}
		if _, err := s.RollbackModel(ctx, "solar", "edge-1"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("rollback past the first: %v", err)
		}
		if m, err := s.PromoteModel(ctx, v3.ID); err != nil || !m.Active {
			t.Fatalf("promote v3: %+v %v", m, err)
		}
		list, err := s.ListModels(ctx, ModelQuery{Kind: "solar", Subject: "edge-1"})
		if err != nil || len(list) != 3 {
			t.Fatalf("list %d %v", len(list), err)
		}
		nActive := 0
		for _, m := range list {
			if m.Params != "" {
				t.Fatal("lists leave the parameters out")
			}
			if m.Active {
				nActive++
			}
		}
		if nActive != 1 {
			t.Fatalf("%d active versions of one model", nActive)
		}
		if _, err := s.PromoteModel(ctx, 9999); !errors.Is(err, ErrNotFound) {
			t.Fatalf("promote unknown: %v", err)
		}
	})
}

// TestFleetBuckets: the database averages samples per step; a missing
// battery stays missing.
func TestFleetBuckets(t *testing.T) {
	eachDB(t, func(t *testing.T, db testDB) {
		s := db.open()
		ctx := context.Background()
		n := &Node{Name: "edge-1", CredentialHash: "x"}
		if err := s.db.Create(n).Error; err != nil {
			t.Fatal(err)
		}
		base := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC).UnixMicro()
		step := int64(time.Minute / time.Microsecond)
		pct := 50.0
		for i := range 6 {
			smp := &Sample{NodeID: n.ID, TimeUS: base + int64(i)*step/2, CPUPercent: float64(10 * i), PowerW: 5, Payload: "{}"}
			if i < 2 {
				smp.BatteryPct = &pct
			}
			if _, _, err := s.InsertSample(ctx, smp, Seen{NowUS: smp.TimeUS}); err != nil {
				t.Fatal(err)
			}
		}
		bs, err := s.FleetBuckets(ctx, base, base+10*step, step)
		if err != nil || len(bs) != 3 {
			t.Fatalf("buckets %+v %v", bs, err)
		}
		if bs[0].CPUPercent != 5 || bs[2].CPUPercent != 45 || bs[0].Samples != 2 {
			t.Fatalf("averages %+v", bs)
		}
		if bs[0].BatteryPct == nil || *bs[0].BatteryPct != 50 || bs[1].BatteryPct != nil {
			t.Fatalf("battery %+v %+v", bs[0].BatteryPct, bs[1].BatteryPct)
		}
		if _, err := s.FleetBuckets(ctx, base, base+step, 0); err == nil {
			t.Fatal("a zero step is refused")
		}
	})
}

// TestNodeEventsOnce: a redelivered event is stored once.
func TestNodeEventsOnce(t *testing.T) {
	eachDB(t, func(t *testing.T, db testDB) {
		s := db.open()
		ctx := context.Background()
		ev := []NodeEvent{{Node: "edge-1", EventID: "e1", TimeUS: 1, Kind: "autonomy.shed", Message: "m"}}
		for range 2 {
			if _, err := s.InsertNodeEvents(ctx, ev); err != nil {
				t.Fatal(err)
			}
			ev[0].ID = 0
		}
		got, err := s.NodeEvents(ctx, "edge-1", 10)
		if err != nil || len(got) != 1 {
			t.Fatalf("events %+v %v", got, err)
		}
	})
}

// TestCellSamplesRetention: samples come back in time order within the
// range asked, and retention removes only the old ones.
func TestCellSamplesRetention(t *testing.T) {
	eachDB(t, func(t *testing.T, db testDB) {
		s := db.open()
		ctx := context.Background()
		var rows []CellSample
		for i := range 5 {
			rows = append(rows, CellSample{Cell: "c", Module: "m", Node: "n", TimeUS: int64(100 - i*10), RatePerS: float64(i)})
		}
		if err := s.InsertCellSamples(ctx, rows); err != nil {
			t.Fatal(err)
		}
		got, err := s.CellSamples(ctx, 70, 100, 10)
		if err != nil || len(got) != 3 || got[0].TimeUS != 70 || got[2].TimeUS != 90 {
			t.Fatalf("range: %+v %v", got, err)
		}
		n, err := s.DeleteCellSamplesBefore(ctx, 80)
		if err != nil || n != 2 {
			t.Fatalf("retention removed %d, %v", n, err)
		}
		if got, _ := s.CellSamples(ctx, 0, 1000, 10); len(got) != 3 {
			t.Fatalf("%d left", len(got))
		}
	})
}
