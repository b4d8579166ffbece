package auth

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func TestTokens(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	tk := NewTokens([]byte("secret-1"), time.Hour)
	tk.now = func() time.Time { return now }
	good, _, err := tk.Issue("admin", "admin")
	if err != nil {
		t.Fatal(err)
	}
	c, err := tk.Verify(good)
	if err != nil || c.Subject != "admin" || c.Role != "admin" {
		t.Fatalf("verify good token: %v %+v", err, c)
	}

	other := NewTokens([]byte("secret-2"), time.Hour)
	other.now = tk.now
	forged, _, _ := other.Issue("admin", "admin")

	none := jwt.NewWithClaims(jwt.SigningMethodNone, Claims{Role: "admin", RegisteredClaims: jwt.RegisteredClaims{
		Issuer: Issuer, Subject: "admin", ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour))}})
	unsigned, _ := none.SignedString(jwt.UnsafeAllowNoneSignatureType)

	noExp := jwt.NewWithClaims(jwt.SigningMethodHS256, Claims{Role: "admin", RegisteredClaims: jwt.RegisteredClaims{Issuer: Issuer, Subject: "admin"}})
	noExpStr, _ := noExp.SignedString([]byte("secret-1"))

	parts := strings.Split(good, ".")
	tampered := parts[0] + "." + parts[1] + "x." + parts[2]

	expired := NewTokens([]byte("secret-1"), time.Hour)
	expired.now = func() time.Time { return now.Add(-2 * time.Hour) }
	old, _, _ := expired.Issue("admin", "admin")

	for name, tok := range map[string]string{
		"other secret": forged, "alg none": unsigned, "no expiry": noExpStr,
		"tampered": tampered, "expired": old, "garbage": "abc", "empty": "",
	} {
		if _, err := tk.Verify(tok); !errors.Is(err, ErrBadToken) {
			t.Errorf("%s: Verify = %v, want ErrBadToken", name, err)
		}
	}
}

func TestPasswords(t *testing.T) {
	h, err := HashPassword("correct horse")
	if err != nil {
		t.Fatal(err)
	}
	if !CheckPassword(h, "correct horse") || CheckPassword(h, "wrong horse") {
		t.Fatal("password check is wrong")
	}
	if _, err := HashPassword("short"); err == nil {
		t.Fatal("short password accepted")
	}
	if _, err := HashPassword(strings.Repeat("x", 73)); err == nil {
		t.Fatal("73-byte password accepted")
	}
}

func TestSecrets(t *testing.T) {
	a, b := NewSecret(32), NewSecret(32)
	if a == b || len(a) < 40 {
		t.Fatalf("secrets %q %q", a, b)
	}
	if !SecretMatches(HashSecret(a), a) || SecretMatches(HashSecret(a), b) {
		t.Fatal("SecretMatches is wrong")
	}
}
