package e2e

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestContractFlow: a consumer rents a dataset under its policies, reads
// it once the provider validates the contract, and loses access at once
// when the policy changes and when the rental ends; a consumer of an
// excluded sector is refused; every read is audited.
func TestContractFlow(t *testing.T) {
	for _, be := range backends[:2] { // SQLite and PostgreSQL
		t.Run(be.name, func(t *testing.T) { contractFlow(t, be) })
	}
}

func contractFlow(t *testing.T, be backend) {
	c := newConsole(t, be)
	admin := c.login()
	profile := func(country, sector string) map[string]any {
		return map[string]any{"nationality": country, "sector": sector, "org_type": "private"}
	}
	users := map[string]map[string]any{
		"agri-prov": {"role": "provider", "profile": profile("ES", "agriculture")},
		"coop":      {"role": "consumer", "profile": profile("ES", "agriculture")},
		"arms":      {"role": "consumer", "profile": profile("ES", "military")},
		"faraway":   {"role": "consumer", "profile": profile("US", "agriculture")},
	}
	tok := map[string]string{}
	for name, u := range users {
		u["username"], u["password"] = name, name+"-password"
		c.do("POST", "/api/v1/users", admin, u, 201, nil)
		var r struct{ Token string }
		c.do("POST", "/api/v1/auth/login", "", map[string]string{"username": name, "password": name + "-password"}, 200, &r)
		tok[name] = r.Token
	}
	policy := json.RawMessage(`{"permissions":[{"constraints":[{"leftOperand":"participantCountry","operator":"isAnyOf","rightOperand":["ES","FR","IT"]}]}],
		"prohibitions":[{"constraints":[{"leftOperand":"industry","operator":"eq","rightOperand":"military"}]}]}`)
	c.do("POST", "/api/v1/datasets", tok["agri-prov"], map[string]any{"id": "fields", "title": "Field stations", "type": "rental",
		"price_cents": 900, "engine": json.RawMessage(rmisEngine), "contract_policy": policy}, 201, nil)
	c.do("POST", "/api/v1/datasets/fields/datareads", tok["agri-prov"], map[string]any{"datareads": []map[string]any{
		{"time": "2022-01-01T07:05:00Z", "reading": map[string]any{"temp": -10.6, "rh": 97.43, "wind": 1.93}},
		{"time": "2022-01-01T07:10:00Z", "reading": map[string]any{"temp": -10.63, "rh": 97.33, "wind": 2.168}},
	}}, 200, nil)
	// The provider's license document, readable before a contract.
	doc := "License: research and irrigation planning only. Signed, agri-prov."
	if code, _, raw := c.send("PUT", "/api/v1/datasets/fields/document", http.Header{"Authorization": {"Bearer " + tok["agri-prov"]}}, strings.NewReader(doc)); code != 200 {
		t.Fatalf("document upload: %d %s", code, raw)
	}
	for who, want := range map[string]int{"coop": 200, "arms": 200} {
		code, _, raw := c.send("GET", "/api/v1/datasets/fields/document", http.Header{"Authorization": {"Bearer " + tok[who]}}, nil)
		if code != want || (code == 200 && string(raw) != doc) {
			t.Fatalf("%s reading the document: %d %q", who, code, raw)
		}
	}
	if code, _, _ := c.send("PUT", "/api/v1/datasets/fields/document", http.Header{"Authorization": {"Bearer " + tok["coop"]}}, strings.NewReader("forged")); code != 403 {
		t.Fatalf("a consumer replacing the document: %d", code)
	}
	if code, _, _ := c.send("PUT", "/api/v1/datasets/fields/document", http.Header{"Authorization": {"Bearer " + tok["agri-prov"]}}, strings.NewReader("")); code != 400 {
		t.Fatalf("an empty document: %d", code)
	}
	if _, _, raw := c.send("GET", "/api/v1/datasets/fields/document", http.Header{"Authorization": {"Bearer " + tok["coop"]}}, nil); string(raw) != doc {
		t.Fatalf("the document after a refused empty upload: %q", raw)
	}
	read := func(who string) (int, string) {
		code, _, raw := c.send("GET", "/api/v1/datasets/fields/datareads", http.Header{"Authorization": {"Bearer " + tok[who]}}, nil)
		return code, string(raw)
	}

	// The catalog shows the dataset without data, and whether one qualifies.
	var cat struct {
		Datasets []struct {
			ID        string
			Qualifies bool
			Why       string
			Engine    json.RawMessage
		}
	}
	c.do("GET", "/api/v1/catalog", tok["arms"], nil, 200, &cat)
	if len(cat.Datasets) != 1 || cat.Datasets[0].Qualifies || !strings.Contains(cat.Datasets[0].Why, "military") {
		t.Fatalf("catalog for a military consumer %+v", cat)
	}
	// Refused at request time: an excluded sector, a nationality not allowed.
	for _, who := range []string{"arms", "faraway"} {
		var e struct{ Error string }
		c.do("POST", "/api/v1/contracts", tok[who], map[string]any{"dataset": "fields", "purpose": "research", "end_at": time.Now().Add(time.Hour)}, 403, &e)
		if !strings.Contains(e.Error, "policy") {
			t.Fatalf("%s refused without a reason: %q", who, e.Error)
		}
	}
	var k struct{ ID, State string }
	end := time.Now().Add(6 * time.Second)
	c.do("POST", "/api/v1/contracts", tok["coop"], map[string]any{"dataset": "fields", "purpose": "irrigation", "end_at": end}, 201, &k)
	if k.State != "REQUESTED" {
		t.Fatalf("contract %+v", k)
	}
	if code, raw := read("coop"); code != 403 {
		t.Fatalf("read before the provider agreed: %d %s", code, raw)
	}
	// Nobody but the provider (or an admin) validates it.
	c.do("POST", "/api/v1/contracts/"+k.ID+"/agree", tok["coop"], map[string]any{"document": "self-signed"}, 403, nil)
	c.do("POST", "/api/v1/contracts/"+k.ID+"/agree", tok["agri-prov"], map[string]any{"document": "signed: agri-prov, 2026-11-29"}, 200, nil)
	code, raw := read("coop")
	if code != 200 || !strings.Contains(raw, `"temp":-10.6`) {
		t.Fatalf("read under an active contract: %d %s", code, raw)
	}
	// Others still cannot read it.
	if code, _ := read("faraway"); code != 403 {
		t.Fatalf("read without a contract: %d", code)
	}
	// A policy change takes effect on the next read.
	c.do("PUT", "/api/v1/datasets/fields/policies", tok["agri-prov"], map[string]any{"contract_policy": json.RawMessage(
		`{"permissions":[{"constraints":[{"leftOperand":"purpose","operator":"eq","rightOperand":"research"}]}]}`)}, 200, nil)
	if code, raw := read("coop"); code != 403 || !strings.Contains(raw, "no longer allows") {
		t.Fatalf("read after the policy excluded the purpose: %d %s", code, raw)
	}
	c.do("PUT", "/api/v1/datasets/fields/policies", tok["agri-prov"], map[string]any{"contract_policy": policy}, 200, nil)
	if code, _ := read("coop"); code != 200 {
		t.Fatalf("read after the policy allowed it again: %d", code)
	}
	// The provider sees who read.
	var audit struct {
		Audit []struct {
			User, Contract string
			Records        int
		}
	}
	c.do("GET", "/api/v1/datasets/fields/audit", tok["agri-prov"], nil, 200, &audit)
	if len(audit.Audit) < 2 || audit.Audit[0].User != "coop" || audit.Audit[0].Contract != k.ID || audit.Audit[0].Records != 2 {
		t.Fatalf("audit %+v", audit)
	}
	c.do("GET", "/api/v1/datasets/fields/audit", tok["coop"], nil, 403, nil)
	// The rental ends by itself.
	time.Sleep(time.Until(end) + 200*time.Millisecond)
	if code, raw := read("coop"); code != 403 {
		t.Fatalf("read after the rental ended: %d %s", code, raw)
	}
}
