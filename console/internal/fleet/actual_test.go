package fleet

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

func TestSinkStoresCellStatuses(t *testing.T) {
	s, m := newService(t)
	ctx := context.Background()
	enroll(t, s, "edge-1")
	enroll(t, s, "edge-2")
	digest := strings.Repeat("a", 64)
	for id, node := range map[string]string{"mine": "edge-1", "theirs": "edge-2"} {
		if err := s.store.CreateCell(ctx, &store.Cell{ID: id, Node: node, Module: digest, Spec: "{}"}); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now().UTC()
	s.now = func() time.Time { return now }
	a, _ := json.Marshal(protocol.Actual{Node: "edge-1", Generation: 1, Time: now, Cells: []protocol.CellStatus{
		{ID: "mine", Module: digest, State: protocol.CellRunning, Invocations: 3},
		{ID: "theirs", State: protocol.CellFailed}, // edge-2's cell: not edge-1's to report
		{ID: "gone", State: protocol.CellRunning},
	}})
	if err := s.Sink(ctx, s.cfg.Topics.Node("edge-1", protocol.LeafActual), a); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(m.ActualUnknownCells); got != 2 {
		t.Fatalf("unknown cells counted %v, want 2", got)
	}
	mine, _ := s.store.CellByID(ctx, "mine")
	var st protocol.CellStatus
	if err := json.Unmarshal([]byte(mine.StatusJSON), &st); err != nil || st.State != protocol.CellRunning || st.Invocations != 3 || mine.StatusUS != now.UnixMicro() {
		t.Fatalf("status of mine: %+v (%v) at %d", st, err, mine.StatusUS)
	}
	if theirs, _ := s.store.CellByID(ctx, "theirs"); theirs.StatusJSON != "" {
		t.Fatalf("edge-1 wrote edge-2's cell status: %s", theirs.StatusJSON)
	}
	if n, _ := s.Node(ctx, "edge-1"); n.Status != protocol.StateOnline {
		t.Fatalf("an actual state must mark the node seen: %s", n.Status)
	}
}
