package testenv

import "testing"

func TestWithDatabase(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://u:p@h:5432/postgres?sslmode=disable": "postgres://u:p@h:5432/x?sslmode=disable",
		"postgres://u:p@h:5432/postgres":                 "postgres://u:p@h:5432/x",
		"postgres://u:p@h:5432":                          "postgres://u:p@h:5432/x",
	} {
		if got := withDatabase(in, "x"); got != want {
			t.Errorf("withDatabase(%q) = %q, want %q", in, got, want)
		}
	}
}
