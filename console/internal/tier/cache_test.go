package tier

import (
	"fmt"
	"testing"

	"github.com/cloudskin/cloudskin/shared/protocol"
)

func TestCacheBounds(t *testing.T) {
	c := newCache(3, 100)
	recs := []protocol.StreamRecord{{Offset: 1}}
	for i := range 5 {
		c.put(fmt.Sprint(i), recs, 10)
	}
	if c.len() != 3 {
		t.Fatalf("%d entries, want 3", c.len())
	}
	for id, want := range map[string]bool{"0": false, "1": false, "2": true, "3": true, "4": true} {
		if _, ok := c.get(id); ok != want {
			t.Errorf("entry %s cached %v, want %v", id, ok, want)
		}
	}
	// The checks above read in map order, which moved recency around: read
	// 3, 4 and then 2 in a fixed order, so 3 is the least recent and goes first.
	c.get("3")
	c.get("4")
	c.get("2")
	c.put("5", recs, 10)
	if _, ok := c.get("3"); ok {
		t.Error("least recently used entry kept")
	}
	if _, ok := c.get("2"); !ok {
		t.Error("recently used entry evicted")
	}
	// The byte bound evicts too, and a segment over it is not kept.
	c.put("big", recs, 91)
	if c.len() != 1 || c.bytes != 91 {
		t.Fatalf("after a large entry: %d entries, %d bytes", c.len(), c.bytes)
	}
	c.put("huge", recs, 101)
	if _, ok := c.get("huge"); ok {
		t.Error("an entry over the byte bound was cached")
	}
	c.remove("big")
	if c.len() != 0 || c.bytes != 0 {
		t.Fatalf("after remove: %d entries, %d bytes", c.len(), c.bytes)
	}
}
