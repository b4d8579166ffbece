package store

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestCells(t *testing.T) {
	eachDB(t, func(t *testing.T, db testDB) {
		s := db.open()
		ctx := context.Background()
		gen := func(node string) int64 {
			t.Helper()
			g, _, _, err := s.DesiredState(ctx, node)
			if err != nil {
				t.Fatal(err)
			}
			return g
		}
		if g := gen("edge-1"); g != 0 {
			t.Fatalf("generation of a node without cells: %d", g)
		}
		digest := strings.Repeat("a", 64)
		for _, c := range []*Cell{
			{ID: "b", Node: "edge-1", Module: digest, Spec: `{"id":"b"}`, CreatedBy: "admin"},
			{ID: "a", Node: "edge-1", Module: digest, Spec: `{"id":"a"}`},
			{ID: "c", Node: "edge-2", Module: digest, Spec: `{"id":"c"}`},
		} {
			if err := s.CreateCell(ctx, c); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.CreateCell(ctx, &Cell{ID: "a", Node: "edge-2", Module: digest, Spec: "{}"}); !errors.Is(err, ErrConflict) {
			t.Fatalf("same id on another node: %v, want ErrConflict", err)
		}
		g, cs, _, err := s.DesiredState(ctx, "edge-1")
		if err != nil || g != 2 || len(cs) != 2 || cs[0].ID != "a" || cs[1].ID != "b" {
			t.Fatalf("desired edge-1: generation %d cells %+v (%v), want 2 and [a b]", g, cs, err)
		}
		if g := gen("edge-2"); g != 1 {
			t.Fatalf("edge-2 generation %d, want 1 (the refused duplicate must not bump it)", g)
		}
		if all, _ := s.ListCells(ctx, ""); len(all) != 3 {
			t.Fatalf("all cells: %+v", all)
		}
		if two, _ := s.ListCells(ctx, "edge-2"); len(two) != 1 || two[0].ID != "c" {
			t.Fatalf("cells of edge-2: %+v", two)
		}

		// Status: only the node's own cells are written.
		n, err := s.SetCellStatuses(ctx, "edge-1", map[string]string{"a": `{"id":"a","state":"running"}`, "c": `{"id":"c"}`, "ghost": `{}`}, 42)
		if err != nil || n != 1 {
			t.Fatalf("status update touched %d (%v), want 1: c is on edge-2, ghost unknown", n, err)
		}
		if a, _ := s.CellByID(ctx, "a"); a.StatusJSON != `{"id":"a","state":"running"}` || a.StatusUS != 42 {
			t.Fatalf("cell a after status: %+v", a)
		}
		if c, _ := s.CellByID(ctx, "c"); c.StatusJSON != "" || c.StatusUS != 0 {
			t.Fatalf("edge-1 wrote edge-2's cell: %+v", c)
		}

		nodes, err := s.DeleteCell(ctx, "a")
		if err != nil || len(nodes) != 1 || nodes[0] != "edge-1" {
			t.Fatalf("delete: %q %v", nodes, err)
		}
		if _, err := s.DeleteCell(ctx, "a"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("delete twice: %v", err)
		}
		if _, err := s.CellByID(ctx, "a"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("deleted cell read back: %v", err)
		}
		s.DeleteCell(ctx, "b")
		if g, cs, _, _ := s.DesiredState(ctx, "edge-1"); g != 4 || len(cs) != 0 {
			t.Fatalf("after deleting both: generation %d cells %d, want 4 and none", g, len(cs))
		}
		// A node whose cells are all gone still has a desired state to restore.
		if nodes, err := s.NodesWithDesired(ctx); err != nil || len(nodes) != 2 || nodes[0] != "edge-1" || nodes[1] != "edge-2" {
			t.Fatalf("nodes with desired state: %v %v", nodes, err)
		}
	})
}
