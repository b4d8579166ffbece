// Package objects stores immutable blobs (cell modules today; snapshots
// and segments later) by key, behind one small interface so the console
// can keep them on its own disk or, later, in S3.
package objects

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// Errors callers act on.
var (
	ErrNotFound   = errors.New("object not found")
	ErrInvalidKey = errors.New("invalid object key")
)

// Store is a place for objects. Keys are slash-separated paths of
// segments made of letters, digits, '.', '_' and '-' (validated by
// ValidKey); a Put replaces the whole object atomically, so readers see the
// old bytes or the new, never a mix.
type Store interface {
	// Put stores everything r yields under key and returns its size and
	// SHA-256 (hex).
	Put(ctx context.Context, key string, r io.Reader) (size int64, sha256 string, err error)
	// Get opens an object; the caller closes it. The reader may also be an
	// io.ReadSeeker (it is on the filesystem), which lets HTTP serve ranges.
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	// Stat describes an object without reading it.
	Stat(ctx context.Context, key string) (Info, error)
	// Delete removes an object; deleting a missing one is not an error.
	Delete(ctx context.Context, key string) error
}

// Info describes a stored object.
type Info struct {
	Key     string
	Size    int64
	ModTime time.Time
}

// MaxKeyLen bounds a key.
const MaxKeyLen = 512

// ValidKey refuses keys that could escape the store or collide with its
// temporary files: empty, absolute, with empty, "." or ".." segments, a
// segment starting with '.', or characters outside [A-Za-z0-9._-].
func ValidKey(key string) error {
	if key == "" || len(key) > MaxKeyLen {
		return fmt.Errorf("%w: %q must be 1 to %d bytes", ErrInvalidKey, key, MaxKeyLen)
	}
	for _, seg := range strings.Split(key, "/") {
		if seg == "" || seg[0] == '.' {
			return fmt.Errorf("%w: %q has an empty segment or one starting with '.'", ErrInvalidKey, key)
		}
		for _, c := range []byte(seg) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
				return fmt.Errorf("%w: %q may hold only letters, digits, '.', '_', '-' and '/'", ErrInvalidKey, key)
			}
		}
	}
	return nil
}

// ctxReader stops a long copy when its context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
