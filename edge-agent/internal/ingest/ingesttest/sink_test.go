package ingesttest

import (
	"path/filepath"
	"testing"

	"github.com/cloudskin/cloudskin/edge-agent/internal/journal"
)

func TestMatch(t *testing.T) {
	for _, c := range []struct {
		filter, topic string
		want          bool
	}{
		{"sensors/#", "sensors/a/b", true},
		{"sensors/#", "sensors", true},
		{"sensors/+/t", "sensors/a/t", true},
		{"sensors/+/t", "sensors/a/b/t", false},
		{"sensors/+", "sensors/a/b", false},
		{"a/b", "a/b", true},
		{"a/b", "a/b/c", false},
		{"#", "$SYS/x", false},
		{"+/x", "$SYS/x", false},
		{"$SYS/#", "$SYS/x", true},
	} {
		if got := Match(c.filter, c.topic); got != c.want {
			t.Errorf("Match(%q, %q) = %v, want %v", c.filter, c.topic, got, c.want)
		}
	}
}

func TestSinkStoresInOrder(t *testing.T) {
	j, err := journal.Open(filepath.Join(t.TempDir(), "wal"), journal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	s := NewJournalSink(j, Options{Filters: []string{"s/#"}})
	if s.Append("other", []byte("x"), nil, func(error) { t.Error("done for a topic no filter matches") }) {
		t.Fatal("took a topic no filter matches")
	}
	errs := make(chan error, 100)
	for i := range 100 {
		s.Append("s/a", []byte{byte(i)}, nil, func(err error) { errs <- err })
	}
	for range 100 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	msgs, err := Messages(j)
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range msgs {
		if m.Topic != "s/a" || m.Payload != string([]byte{byte(i)}) {
			t.Fatalf("record %d: %+v", i, m)
		}
	}
	if len(msgs) != 100 {
		t.Fatalf("%d records, want 100", len(msgs))
	}
	if _, _, err := Decode([]byte{0x05, 'a'}); err == nil {
		t.Error("Decode accepted a truncated record")
	}
}
