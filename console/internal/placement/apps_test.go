package placement

import (
	"errors"
	"strings"
	"testing"

	"github.com/cloudskin/cloudskin/shared/protocol"
)

// TestAppPriority: an app's priority reaches every cell spec; an unknown
// one is refused.
func TestAppPriority(t *testing.T) {
	a := AppSpec{Name: "farm", Priority: protocol.PriorityLow, Replicas: 2,
		Cells: []AppCell{{Name: "agg", Module: strings.Repeat("ab", 32), Inputs: []protocol.Input{{Name: "in", Topics: []string{"s/#"}}}}}}
	if err := a.Validate(); err != nil {
		t.Fatal(err)
	}
	specs, err := a.cellSpecs()
	if err != nil || len(specs) != 2 {
		t.Fatalf("%d specs, %v", len(specs), err)
	}
	for _, s := range specs {
		if s.Priority != protocol.PriorityLow {
			t.Fatalf("%s has priority %q", s.ID, s.Priority)
		}
	}
	a.Priority = "urgent"
	if err := a.Validate(); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "priority") {
		t.Fatalf("priority urgent: %v", err)
	}
}
