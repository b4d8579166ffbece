package api

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/console/internal/auth"
	"github.com/cloudskin/cloudskin/console/internal/fleet"
	"github.com/cloudskin/cloudskin/console/internal/metrics"
	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// TestNodeEventsEndpoint: an operator reads a node's events newest first,
// with RFC 3339 times and the forecast detail; no token is 401, a
// dataspace consumer is 403, bad input is 400, an unknown node 404.
func TestNodeEventsEndpoint(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, "", t.TempDir(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	m := metrics.New()
	topics := protocol.NewTopics("")
	fl := fleet.New(fleet.Config{Topics: topics}, st, m, quiet)
	tok, _, err := fl.CreateToken(ctx, time.Hour, "", "admin")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fl.Enroll(ctx, fleet.EnrollRequest{Token: tok, Name: "edge-1"}); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 6, 1, 21, 0, 0, 0, time.UTC)
	for i, kind := range []string{protocol.EventAutonomyStart, protocol.EventAutonomyShed} {
		b, _ := json.Marshal(protocol.NodeEvent{Node: "edge-1", ID: "ev-" + kind, Time: t0.Add(time.Duration(i) * time.Second), Kind: kind,
			Message: "m", Detail: json.RawMessage(`{"hours_left":0.4,"capacity_wh":250}`)})
		if err := fl.Sink(ctx, topics.Node("edge-1", protocol.LeafEvents), b); err != nil {
			t.Fatal(err)
		}
	}
	tokens := auth.NewTokens([]byte("jwt-secret-for-tests-0123456789"), time.Hour)
	jwts := map[string]string{}
	for name, role := range map[string]string{"ops": store.RoleOperator, "buyer": store.RoleConsumer} {
		if err := st.CreateUser(ctx, &store.User{Username: name, PasswordHash: "x", Role: role, Status: store.UserActive}); err != nil {
			t.Fatal(err)
		}
		jwts[name], _, _ = tokens.Issue(name, role)
	}
	srv := httptest.NewServer((&Server{Store: st, Fleet: fl, Tokens: tokens, Metrics: m, Log: quiet,
		Ready: func(context.Context) error { return nil }}).Handler())
	t.Cleanup(srv.Close)
	get := func(path, jwt string) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		if jwt != "" {
			req.Header.Set("Authorization", "Bearer "+jwt)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}

	code, body := get("/api/v1/nodes/edge-1/events", jwts["ops"])
	if code != http.StatusOK {
		t.Fatalf("GET events: %d %s", code, body)
	}
	var out struct {
		Node   string `json:"node"`
		Events []struct {
			ID     string          `json:"id"`
			Time   string          `json:"time"`
			Kind   string          `json:"kind"`
			Detail json.RawMessage `json:"detail"`
		} `json:"events"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatal(err)
	}
	if out.Node != "edge-1" || len(out.Events) != 2 || out.Events[0].Kind != protocol.EventAutonomyShed {
		t.Fatalf("events %s, want 2, newest first", body)
	}
	if tm, err := time.Parse(time.RFC3339, out.Events[0].Time); err != nil || !tm.Equal(t0.Add(time.Second)) {
		t.Fatalf("time %q is not RFC 3339 of the event (%v)", out.Events[0].Time, err)
	}
	if string(out.Events[0].Detail) != `{"hours_left":0.4,"capacity_wh":250}` {
		t.Fatalf("detail %s", out.Events[0].Detail)
	}
	if code, body := get("/api/v1/nodes/edge-1/events?limit=1", jwts["ops"]); code != 200 || json.Unmarshal(body, &out) != nil || len(out.Events) != 1 {
		t.Fatalf("limit 1: %d %s", code, body)
	}

	for _, tc := range []struct {
		name, path, jwt string
		code            int
	}{
		{"no token", "/api/v1/nodes/edge-1/events", "", http.StatusUnauthorized},
		{"bad token", "/api/v1/nodes/edge-1/events", "not-a-jwt", http.StatusUnauthorized},
		{"consumer", "/api/v1/nodes/edge-1/events", jwts["buyer"], http.StatusForbidden},
		{"limit not a number", "/api/v1/nodes/edge-1/events?limit=ten", jwts["ops"], http.StatusBadRequest},
		{"limit too large", "/api/v1/nodes/edge-1/events?limit=1000000", jwts["ops"], http.StatusBadRequest},
		{"bad node name", "/api/v1/nodes/Edge_1/events", jwts["ops"], http.StatusBadRequest},
		{"unknown node", "/api/v1/nodes/ghost/events", jwts["ops"], http.StatusNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := get(tc.path, tc.jwt)
			var e struct {
				Error string `json:"error"`
			}
			if code != tc.code || json.Unmarshal(body, &e) != nil || e.Error == "" {
				t.Fatalf("%d %s, want %d with a JSON error", code, body, tc.code)
			}
		})
	}
}
