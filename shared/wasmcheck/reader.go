package wasmcheck

import (
	"fmt"
	"unicode/utf8"
)

// reader walks a byte slice; every read is bounds-checked and a failure is
// an ErrMalformed naming the absolute offset, so no input can make the
// validator panic or allocate more than the input's size.
type reader struct {
	b    []byte
	off  int // into b
	base int // absolute offset of b[0] in the module, for messages
}

func (r *reader) sub(n int) (*reader, error) {
	if n < 0 || n > len(r.b)-r.off {
		return nil, r.errorf("length %d runs past the end (%d bytes left)", n, len(r.b)-r.off)
	}
	s := &reader{b: r.b[r.off : r.off+n], base: r.base + r.off}
	r.off += n
	return s, nil
}

func (r *reader) left() int { return len(r.b) - r.off }

func (r *reader) done() bool { return r.off >= len(r.b) }

func (r *reader) errorf(format string, args ...any) error {
	return fmt.Errorf("%w: at byte %#x: %s", ErrMalformed, r.base+r.off, fmt.Sprintf(format, args...))
}

func (r *reader) byte() (byte, error) {
	if r.off >= len(r.b) {
		return 0, r.errorf("unexpected end")
	}
	c := r.b[r.off]
	r.off++
	return c, nil
}

func (r *reader) bytes(n int) ([]byte, error) {
	if n < 0 || n > r.left() {
		return nil, r.errorf("length %d runs past the end (%d bytes left)", n, r.left())
	}
	out := r.b[r.off : r.off+n]
	r.off += n
	return out, nil
}

// uleb reads an unsigned LEB128 of at most bits bits, refusing overlong
// encodings and unused high bits set in the last byte, as the spec does.
func (r *reader) uleb(bits uint) (uint64, error) {
	start := r.off
	var v uint64
	for shift := uint(0); ; shift += 7 {
		if shift >= bits {
			r.off = start
			return 0, r.errorf("integer representation too long")
		}
		c, err := r.byte()
		if err != nil {
			return 0, err
		}
		if rest := bits - shift; rest < 7 && c&0x7f>>rest != 0 {
			r.off = start
			return 0, r.errorf("integer too large")
		}
		v |= uint64(c&0x7f) << shift
		if c&0x80 == 0 {
			return v, nil
		}
	}
}

// sleb reads a signed LEB128 of at most bits bits.
func (r *reader) sleb(bits uint) (int64, error) {
	start := r.off
	var v int64
	for shift := uint(0); ; shift += 7 {
		if shift >= bits {
			r.off = start
			return 0, r.errorf("integer representation too long")
		}
		c, err := r.byte()
		if err != nil {
			return 0, err
		}
		v |= int64(c&0x7f) << shift
		if c&0x80 != 0 {
			continue
		}
		if rest := bits - shift; rest < 7 {
			// The unused bits must all equal the sign bit.
			extra := c & 0x7f >> (rest - 1)
			if extra != 0 && extra != 0x7f>>(rest-1) {
				r.off = start
				return 0, r.errorf("integer too large")
			}
		}
		if shift+7 < 64 && c&0x40 != 0 {
			v |= -1 << (shift + 7)
		}
		return v, nil
	}
}

func (r *reader) u32() (uint32, error) {
	v, err := r.uleb(32)
	return uint32(v), err
}

// count reads a vector length and refuses one that cannot fit: each element
// takes at least minSize bytes of what is left.
func (r *reader) count(what string, minSize int) (int, error) {
	n, err := r.u32()
	if err != nil {
		return 0, err
	}
	if uint64(n)*uint64(minSize) > uint64(r.left()) {
		return 0, r.errorf("%s count %d cannot fit in the %d bytes left", what, n, r.left())
	}
	return int(n), nil
}

func (r *reader) name() (string, error) {
	n, err := r.u32()
	if err != nil {
		return "", err
	}
	if uint64(n) > uint64(r.left()) {
		return "", r.errorf("name length %d runs past the end (%d bytes left)", n, r.left())
	}
	b, _ := r.bytes(int(n))
	if !utf8.Valid(b) {
		return "", r.errorf("name is not valid UTF-8")
	}
	return string(b), nil
}
