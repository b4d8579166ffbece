package store

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestModules(t *testing.T) {
	eachDB(t, func(t *testing.T, db testDB) {
		s := db.open()
		ctx := context.Background()
		maxPages := int64(16)
		older := &Module{Digest: strings.Repeat("a", 64), Name: "aggregator", SizeBytes: 120, ABIVersion: 1,
			MemoryMinPages: 1, MemoryMaxPages: &maxPages, Exports: `[{"name":"memory","kind":"memory"}]`, Imports: `[]`,
			UploadedBy: "admin", UploadedAt: time.Now().UTC().Add(-time.Minute)}
		newer := &Module{Digest: strings.Repeat("b", 64), SizeBytes: 7, MemoryMinPages: 65536, Exports: `[]`, Imports: `[]`,
			UploadedBy: "ops", UploadedAt: time.Now().UTC()}
		for _, m := range []*Module{older, newer} {
			if err := s.CreateModule(ctx, m); err != nil {
				t.Fatal(err)
			}
		}
		again := *older
		again.ID = 0
		if err := s.CreateModule(ctx, &again); !errors.Is(err, ErrConflict) {
			t.Fatalf("same digest twice: %v, want ErrConflict", err)
		}
		got, err := s.ModuleByDigest(ctx, older.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if got.Name != "aggregator" || got.MemoryMaxPages == nil || *got.MemoryMaxPages != 16 || got.ABIVersion != 1 || got.Exports != older.Exports {
			t.Fatalf("read back %+v", got)
		}
		if got, _ := s.ModuleByDigest(ctx, newer.Digest); got.MemoryMaxPages != nil || got.MemoryMinPages != 65536 {
			t.Fatalf("no maximum read back as %v, min %d", got.MemoryMaxPages, got.MemoryMinPages)
		}
		if _, err := s.ModuleByDigest(ctx, strings.Repeat("c", 64)); !errors.Is(err, ErrNotFound) {
			t.Fatalf("unknown digest: %v", err)
		}
		list, err := s.ListModules(ctx)
		if err != nil || len(list) != 2 || list[0].Digest != newer.Digest {
			t.Fatalf("list %+v %v, want two, newest first", list, err)
		}
	})
}
