package e2e

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// TestDataspaceUsers: providers and consumers register with a profile, wait
// for an admin's approval, log in with their role, are kept off the fleet's
// and the admin's endpoints, and reset a password with a one-time token.
func TestDataspaceUsers(t *testing.T) {
	c := newConsole(t, backends[0])
	admin := c.login()
	json_ := http.Header{"Content-Type": {"application/json"}}
	post := func(path, body string, h http.Header) (int, []byte) {
		t.Helper()
		code, _, raw := c.send("POST", path, h, strings.NewReader(body))
		return code, raw
	}
	login := func(user, pw string) (int, string) {
		code, raw := post("/api/v1/auth/login", `{"username":"`+user+`","password":"`+pw+`"}`, json_)
		var r struct{ Token, Role string }
		json.Unmarshal(raw, &r)
		return code, r.Token
	}
	reg := `{"username":"farm-coop","password":"correct horse battery","role":"consumer",
		"profile":{"nationality":"ES","sector":"agriculture","org_type":"private","non_profit":true}}`
	if code, raw := post("/api/v1/auth/register", reg, json_); code != 201 || !bytes.Contains(raw, []byte(`"status":"pending"`)) {
		t.Fatalf("register: %d %s", code, raw)
	}
	if code, _ := post("/api/v1/auth/register", reg, json_); code != 409 {
		t.Fatalf("register twice: %d", code)
	}
	for name, body := range map[string]string{
		"as admin":        strings.Replace(reg, `"consumer"`, `"admin"`, 1),
		"as operator":     strings.Replace(reg, `"consumer"`, `"operator"`, 1),
		"short password":  strings.Replace(reg, `correct horse battery`, `short`, 1),
		"bad nationality": strings.Replace(reg, `"ES"`, `"Spain"`, 1),
		"bad org type":    strings.Replace(reg, `"private"`, `"pirate"`, 1),
		"injection":       strings.Replace(reg, `"farm-coop"`, `"x'; DROP TABLE users; --"`, 1),
		"unknown field":   strings.Replace(reg, `"role"`, `"admin":true,"role"`, 1),
	} {
		if code, raw := post("/api/v1/auth/register", body, json_); code != 400 {
			t.Errorf("register %s: %d %s", name, code, raw)
		}
	}
	// Pending: the right password gets a 403 and no token.
	if code, tok := login("farm-coop", "correct horse battery"); code != 403 || tok != "" {
		t.Fatalf("pending login: %d %q", code, tok)
	}
	c.do("POST", "/api/v1/users/farm-coop/approve", admin, nil, 200, nil)
	code, tok := login("farm-coop", "correct horse battery")
	if code != 200 || tok == "" {
		t.Fatalf("approved login: %d", code)
	}
	var me struct {
		Role    string
		Profile struct {
			Nationality string
			NonProfit   bool `json:"non_profit"`
		}
	}
	c.do("GET", "/api/v1/users/me", tok, nil, 200, &me)
	if me.Role != "consumer" || me.Profile.Nationality != "ES" || !me.Profile.NonProfit {
		t.Fatalf("me %+v", me)
	}
	bearer := http.Header{"Authorization": {"Bearer " + tok}, "Content-Type": {"application/json"}}
	for _, path := range []string{"/api/v1/nodes", "/api/v1/cells", "/api/v1/apps", "/api/v1/decisions", "/api/v1/users"} {
		if code, _, raw := c.send("GET", path, bearer, nil); code != 403 {
			t.Errorf("consumer GET %s: %d %s", path, code, raw)
		}
	}
	if code, _ := post("/api/v1/users/farm-coop/approve", "", bearer); code != 403 {
		t.Errorf("consumer approving itself: %d", code)
	}
	if code, _ := post("/api/v1/tokens", `{"ttl":"10m"}`, bearer); code != 403 {
		t.Errorf("consumer creating an enrollment token: %d", code)
	}
	// Password reset: one-time, and the old password stops working.
	var reset struct{ Token string }
	c.do("POST", "/api/v1/users/farm-coop/password-reset", admin, nil, 201, &reset)
	if code, _ := post("/api/v1/auth/reset", `{"token":"`+reset.Token+`","password":"new long passphrase"}`, json_); code != 204 {
		t.Fatalf("reset: %d", code)
	}
	if code, _ := post("/api/v1/auth/reset", `{"token":"`+reset.Token+`","password":"another passphrase"}`, json_); code != 401 {
		t.Fatalf("reset token used twice: %d", code)
	}
	if code, _ := post("/api/v1/auth/reset", `{"token":"forged","password":"another passphrase"}`, json_); code != 401 {
		t.Fatalf("forged reset token: %d", code)
	}
	if code, _ := login("farm-coop", "correct horse battery"); code != 401 {
		t.Fatalf("old password after reset: %d", code)
	}
	code, tok2 := login("farm-coop", "new long passphrase")
	if code != 200 {
		t.Fatalf("new password: %d", code)
	}
	// Disabling takes effect at once, also on tokens already issued.
	c.do("POST", "/api/v1/users/farm-coop/disable", admin, nil, 200, nil)
	if code, _, _ := c.send("GET", "/api/v1/users/me", http.Header{"Authorization": {"Bearer " + tok2}}, nil); code != 401 {
		t.Fatalf("disabled user's token: %d", code)
	}
	var pending struct {
		Users []struct{ Username, Status string } `json:"users"`
	}
	c.do("GET", "/api/v1/users?status=disabled", admin, nil, 200, &pending)
	if len(pending.Users) != 1 || pending.Users[0].Username != "farm-coop" {
		t.Fatalf("disabled users %+v", pending)
	}
}
