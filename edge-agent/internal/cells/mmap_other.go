//go:build !unix

package cells

import "os"

// withContents calls fn with the file's contents (read, not mapped, on this platform).
func withContents(path string, fn func([]byte)) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	fn(b)
	return nil
}
