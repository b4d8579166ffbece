package mosquitto

import (
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"encoding/base64"
	"fmt"
)

// The parameters mosquitto_passwd 2.x uses by default (-H sha512-pbkdf2);
// the broker reads them back from each line, so they only have to be valid.
const (
	hashIterations = 101
	saltBytes      = 12
	hashBytes      = sha512.Size
)

// HashPassword returns password hashed the way mosquitto_passwd 2.x does by
// default: "$7$101$" + base64(12-byte random salt) + "$" +
// base64(PBKDF2-SHA512(password, salt, 101 iterations, 64 bytes)).
// The result is what follows "username:" on a password-file line.
func HashPassword(password string) (string, error) {
	salt := make([]byte, saltBytes)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("password salt: %w", err)
	}
	return hashWithSalt(password, salt)
}

func hashWithSalt(password string, salt []byte) (string, error) {
	key, err := pbkdf2.Key(sha512.New, password, salt, hashIterations, hashBytes)
	if err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	enc := base64.StdEncoding
	return fmt.Sprintf("$7$%d$%s$%s", hashIterations, enc.EncodeToString(salt), enc.EncodeToString(key)), nil
}
