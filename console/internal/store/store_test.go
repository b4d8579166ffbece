package store

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/shared/testenv"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// testDB is one database a test can open, close and reopen.
type testDB struct {
	t        *testing.T
	dsn, dir string
}

func (d testDB) tryOpen() (*Store, error) {
	return Open(context.Background(), d.dsn, d.dir, quiet)
}

func (d testDB) open() *Store {
	d.t.Helper()
	s, err := d.tryOpen()
	if err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() { s.Close() })
	return s
}

// eachDB runs f against a fresh SQLite file and a fresh PostgreSQL database.
func eachDB(t *testing.T, f func(t *testing.T, db testDB)) {
	for _, name := range []string{"sqlite", "postgres"} {
		t.Run(name, func(t *testing.T) {
			db := testDB{t: t, dir: t.TempDir()}
			if name == "postgres" {
				db.dsn = testenv.PostgresDB(t)
			}
			f(t, db)
		})
	}
}

func TestMigrations(t *testing.T) {
	eachDB(t, func(t *testing.T, db testDB) {
		s := db.open()
		ctx := context.Background()
		var applied []Migration
		if err := s.db.Find(&applied).Error; err != nil || len(applied) != SchemaVersion() {
			t.Fatalf("applied %v (%v), want %d", applied, err, SchemaVersion())
		}
		if err := s.CreateUser(ctx, &User{Username: "u", PasswordHash: "h", Role: RoleAdmin}); err != nil {
			t.Fatal(err)
		}
		s.Close()
		// Reopening applies nothing again and keeps the data.
		s = db.open()
		if n, _ := s.CountUsers(ctx); n != 1 {
			t.Fatalf("users after reopen: %d", n)
		}
		// A database from a newer console is refused, not damaged.
		if err := s.db.Create(&Migration{Version: SchemaVersion() + 1, Name: "from the future"}).Error; err != nil {
			t.Fatal(err)
		}
		s.Close()
		_, err := db.tryOpen()
		if err == nil || !strings.Contains(err.Error(), "run a newer console") {
			t.Fatalf("newer schema: %v", err)
		}
	})
}

func TestEnrollTokenOnce(t *testing.T) {
	eachDB(t, func(t *testing.T, db testDB) {
		s := db.open()
		ctx := context.Background()
		now := time.Now().UTC()
		mustToken(t, s, "h-live", now.Add(time.Hour))
		mustToken(t, s, "h-old", now.Add(-time.Second))

		// Ten nodes race for one token: exactly one enrolls.
		var wg sync.WaitGroup
		errs := make([]error, 10)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = s.Enroll(ctx, "h-live", now, &Node{Name: "n" + string(rune('a'+i)), CredentialHash: "c"})
			}()
		}
		wg.Wait()
		ok := 0
		for _, err := range errs {
			switch {
			case err == nil:
				ok++
			case errors.Is(err, ErrTokenUsed):
			default:
				t.Errorf("unexpected error: %v", err)
			}
		}
		if ok != 1 {
			t.Fatalf("%d nodes enrolled with one token", ok)
		}
		if err := s.Enroll(ctx, "h-old", now, &Node{Name: "late", CredentialHash: "c"}); !errors.Is(err, ErrTokenExpired) {
			t.Fatalf("expired token: %v", err)
		}
		if err := s.Enroll(ctx, "nope", now, &Node{Name: "x", CredentialHash: "c"}); !errors.Is(err, ErrTokenUnknown) {
			t.Fatalf("unknown token: %v", err)
		}
		// A taken name fails and leaves the token unused (the transaction rolls back).
		mustToken(t, s, "h-2", now.Add(time.Hour))
		nodes, _ := s.ListNodes(ctx)
		err := s.Enroll(ctx, "h-2", now, &Node{Name: nodes[0].Name, CredentialHash: "c"})
		if !errors.Is(err, ErrConflict) {
			t.Fatalf("duplicate name: %v", err)
		}
		if err := s.Enroll(ctx, "h-2", now, &Node{Name: "fresh", CredentialHash: "c"}); err != nil {
			t.Fatalf("token burnt by a failed enrollment: %v", err)
		}
	})
}

func TestSamplesOnceAndNewestWins(t *testing.T) {
	eachDB(t, func(t *testing.T, db testDB) {
		s := db.open()
		ctx := context.Background()
		n := enrolled(t, s, "edge-1")
		put := func(us int64, payload string) bool {
			t.Helper()
			ok, _, err := s.InsertSample(ctx, &Sample{NodeID: n.ID, TimeUS: us, Payload: payload, ReceivedUS: us}, Seen{NowUS: us, WasOnline: true})
			if err != nil {
				t.Fatal(err)
			}
			return ok
		}
		if !put(2000, `{"t":2}`) || put(2000, `{"t":2,"again":true}`) {
			t.Fatal("a repeated (node, time) must be stored once")
		}
		if !put(1000, `{"t":1}`) {
			t.Fatal("an older back-filled sample must be stored")
		}
		got, _ := s.NodeByName(ctx, "edge-1")
		if got.LastTelemetry != `{"t":2}` || got.LastSampleUS != 2000 {
			t.Fatalf("a back-filled sample replaced the newest: %q", got.LastTelemetry)
		}
		rows, err := s.Samples(ctx, n.ID, 0, 1<<62, 10)
		if err != nil || len(rows) != 2 || rows[0].TimeUS != 1000 {
			t.Fatalf("samples %+v %v, want two oldest first", rows, err)
		}
		if deleted, err := s.DeleteSamplesBefore(ctx, 1500); err != nil || deleted != 1 {
			t.Fatalf("retention deleted %d (%v), want 1", deleted, err)
		}
	})
}

func TestLiveness(t *testing.T) {
	eachDB(t, func(t *testing.T, db testDB) {
		s := db.open()
		ctx := context.Background()
		a, b := enrolled(t, s, "a"), enrolled(t, s, "b")
		sec := int64(time.Second / time.Microsecond)
		if became, err := s.NodeSeen(ctx, a.ID, Seen{NowUS: 100 * sec, Fields: map[string]any{"heartbeat_us": sec}}); err != nil || !became {
			t.Fatalf("first message: became=%v err=%v", became, err)
		}
		// A caller that thought the node offline does not make a second transition.
		if became, _ := s.NodeSeen(ctx, a.ID, Seen{NowUS: 101 * sec}); became {
			t.Fatal("second message reported a transition")
		}
		if became, _, _ := s.InsertSample(ctx, &Sample{NodeID: b.ID, TimeUS: 1, Payload: "{}"}, Seen{NowUS: 101 * sec}); !became {
			t.Fatal("a sample from an offline node did not bring it online")
		} // b stated no heartbeat: the default applies
		// At 103.5 s, a (1 s heartbeat) has missed 3; b (default 5 s) has not.
		names, err := s.SweepOffline(ctx, 104*sec+sec/2, 3, 5*sec)
		if err != nil || len(names) != 1 || names[0] != "a" {
			t.Fatalf("swept %v (%v), want [a]", names, err)
		}
		counts, _ := s.CountNodesByStatus(ctx)
		if counts["online"] != 1 || counts["offline"] != 1 {
			t.Fatalf("counts %v", counts)
		}
		if changed, _ := s.MarkOffline(ctx, a.ID, 105*sec, "again"); changed {
			t.Fatal("marking an offline node offline reported a change")
		}
	})
}

func TestSettingIsStable(t *testing.T) {
	eachDB(t, func(t *testing.T, db testDB) {
		s := db.open()
		ctx := context.Background()
		calls := 0
		gen := func() (string, error) { calls++; return "v" + string(rune('0'+calls)), nil }
		v1, err := s.Setting(ctx, "jwt_secret", gen)
		if err != nil {
			t.Fatal(err)
		}
		v2, _ := s.Setting(ctx, "jwt_secret", gen)
		if v1 != v2 || calls != 1 {
			t.Fatalf("setting changed: %q then %q after %d generations", v1, v2, calls)
		}
	})
}

func TestOpenRefusesUnknownDSN(t *testing.T) {
	_, err := Open(context.Background(), "mysql://u:secret@h/db", t.TempDir(), quiet)
	if err == nil || strings.Contains(err.Error(), "secret") {
		t.Fatalf("error %v: want a refusal that does not echo the password", err)
	}
}

func mustToken(t *testing.T, s *Store, hash string, exp time.Time) {
	t.Helper()
	if err := s.CreateToken(context.Background(), &EnrollmentToken{TokenHash: hash, ExpiresAt: exp}); err != nil {
		t.Fatal(err)
	}
}

func enrolled(t *testing.T, s *Store, name string) *Node {
	t.Helper()
	mustToken(t, s, "tok-"+name, time.Now().Add(time.Hour))
	n := &Node{Name: name, CredentialHash: "c", Status: "offline"}
	if err := s.Enroll(context.Background(), "tok-"+name, time.Now(), n); err != nil {
		t.Fatal(err)
	}
	return n
}
