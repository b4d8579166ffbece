package protocol

import (
	"errors"
	"testing"
)

func TestMatchFilter(t *testing.T) {
	for _, c := range []struct {
		f, t string
		want bool
	}{
		{"sensors/#", "sensors/a/b", true},
		{"sensors/#", "sensors", true},
		{"sensors/+/temp", "sensors/a/temp", true},
		{"sensors/+/temp", "sensors/a/b/temp", false},
		{"sensors/+", "sensors", false},
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"#", "anything/at/all", true},
		{"+", "a", true},
		{"+/+", "a", false},
	} {
		if got := MatchFilter(c.f, c.t); got != c.want {
			t.Errorf("MatchFilter(%q, %q) = %v", c.f, c.t, got)
		}
	}
}

func TestStreamSpecValidate(t *testing.T) {
	good := StreamSpec{Name: "sensors", Topics: []string{"sensors/#"}, SegmentBytes: 64 << 10, QuotaBytes: 1 << 20, OnFull: OnFullDropOldest, Spill: true}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string]StreamSpec{
		"no name":         {Topics: []string{"a"}},
		"upper name":      {Name: "Sensors", Topics: []string{"a"}},
		"path name":       {Name: "../x", Topics: []string{"a"}},
		"no topics":       {Name: "s"},
		"bad filter":      {Name: "s", Topics: []string{"a/#/b"}},
		"partial wild":    {Name: "s", Topics: []string{"a/b+"}},
		"negative quota":  {Name: "s", Topics: []string{"a"}, QuotaBytes: -1},
		"tiny segment":    {Name: "s", Topics: []string{"a"}, SegmentBytes: 100},
		"quota < 4 segs":  {Name: "s", Topics: []string{"a"}, SegmentBytes: 1 << 20, QuotaBytes: 2 << 20},
		"unknown on_full": {Name: "s", Topics: []string{"a"}, OnFull: "block"},
	} {
		if err := bad.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v", name, err)
		}
	}
	d := Desired{Node: "n", Streams: []StreamSpec{good, good}}
	if err := d.Validate("n"); !errors.Is(err, ErrInvalid) {
		t.Errorf("duplicate stream: %v", err)
	}
	in := CellSpec{ID: "c", Module: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", Inputs: []Input{{Name: "in", Stream: "s", Topics: []string{"a"}}}}
	if err := in.Validate(); !errors.Is(err, ErrInvalid) {
		t.Errorf("input with stream and topics: %v", err)
	}
	in.Inputs[0].Topics = nil
	if err := in.Validate(); err != nil {
		t.Errorf("input with a stream: %v", err)
	}
}
