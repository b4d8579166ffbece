package dataspace

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestPolicy(t *testing.T) {
	var p Policy
	if err := json.Unmarshal([]byte(`{
	  "permissions":[
	    {"constraints":[{"leftOperand":"participantCountry","operator":"isAnyOf","rightOperand":["ES","FR"]},
	                    {"leftOperand":"nonProfit","operator":"eq","rightOperand":true}]},
	    {"constraints":[{"leftOperand":"orgType","operator":"eq","rightOperand":"scientific"}]}],
	  "prohibitions":[{"constraints":[{"leftOperand":"industry","operator":"isAnyOf","rightOperand":["military","mining"]}]}]}`), &p); err != nil {
		t.Fatal(err)
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		party Party
		ok    bool
		why   string
	}{
		{Party{Country: "ES", NonProfit: true, Industry: "agriculture"}, true, ""},
		{Party{Country: "es", NonProfit: true}, true, ""}, // codes compare case-insensitively
		{Party{Country: "ES", NonProfit: false}, false, "no permission applies"},
		{Party{Country: "US", OrgType: "scientific"}, true, ""},
		{Party{Country: "ES", NonProfit: true, Industry: "military"}, false, "prohibition"},
		{Party{Country: "DE", OrgType: "scientific", Industry: "mining"}, false, "prohibition"},
	} {
		ok, why := p.Allows(tc.party)
		if ok != tc.ok || !strings.Contains(why, tc.why) {
			t.Errorf("%+v: %v %q, want %v %q", tc.party, ok, why, tc.ok, tc.why)
		}
	}
	// Default deny.
	if ok, _ := (&Policy{}).Allows(Party{Country: "ES"}); ok {
		t.Error("an empty policy allowed someone")
	}
	if ok, _ := func() (bool, string) { o := OpenPolicy(); return o.Allows(Party{}) }(); !ok {
		t.Error("the open policy refused someone")
	}
	for _, bad := range []string{
		`{"permissions":[{"constraints":[{"leftOperand":"shoeSize","operator":"eq","rightOperand":"42"}]}]}`,
		`{"permissions":[{"constraints":[{"leftOperand":"industry","operator":"like","rightOperand":"x"}]}]}`,
		`{"permissions":[{"constraints":[{"leftOperand":"industry","operator":"isAnyOf","rightOperand":"x"}]}]}`,
		`{"permissions":[{"constraints":[{"leftOperand":"industry","operator":"eq","rightOperand":[1]}]}]}`,
		`{"permissions":[{"constraints":[{"leftOperand":"industry","operator":"isNoneOf","rightOperand":[]}]}]}`,
	} {
		var q Policy
		if err := json.Unmarshal([]byte(bad), &q); err != nil {
			t.Fatal(err)
		}
		if err := q.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v", bad, err)
		}
	}
}

func TestActive(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		state string
		end   time.Time
		want  bool
	}{
		{StateFinalized, time.Time{}, true},
		{StateFinalized, now.Add(time.Minute), true},
		{StateFinalized, now, false},
		{StateRequested, time.Time{}, false},
		{StateTerminated, now.Add(time.Hour), false},
	} {
		if got := Active(tc.state, tc.end, now); got != tc.want {
			t.Errorf("Active(%s, %v) = %v", tc.state, tc.end, got)
		}
	}
}
