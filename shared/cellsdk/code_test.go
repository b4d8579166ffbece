package cellsdk

import (
	"errors"
	"fmt"
	"testing"
)

func TestCodeOf(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want int32
	}{
		{"nil", nil, 0},
		{"plain", errors.New("boom"), -100},
		{"import code", ErrRateLimited, -2},
		{"wrapped import code", fmt.Errorf("emit aggregates: %w", ErrUnknownStream), -1},
		{"fail", Fail(-200, "bad input %d", 3), -200},
		{"wrapped fail", fmt.Errorf("record 4: %w", Fail(-201, "x")), -201},
		{"fail with non-negative code", Fail(5, "x"), -100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := CodeOf(tt.err, ErrHandler); got != tt.want {
				t.Errorf("CodeOf(%v) = %d, want %d", tt.err, got, tt.want)
			}
		})
	}
}

func TestCodeErr(t *testing.T) {
	for rc, want := range map[int32]error{0: nil, 3: nil, -1: ErrUnknownStream, -2: ErrRateLimited, -3: ErrTooLarge, -4: ErrBadPointer, -5: ErrUnsupported} {
		if got := codeErr(rc); got != want {
			t.Errorf("codeErr(%d) = %v, want %v", rc, got, want)
		}
	}
	if got := codeErr(-42).Error(); got != "cloudskin: code -42" {
		t.Errorf("unknown code text %q", got)
	}
}

func TestFailMessage(t *testing.T) {
	err := Fail(-200, "field %q missing", "temp")
	if err.Error() != `field "temp" missing` {
		t.Errorf("message %q", err)
	}
	if !errors.Is(err, Code(-200)) {
		t.Error("Fail error does not match its code with errors.Is")
	}
}
