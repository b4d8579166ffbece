//go:build !wasip1

package cellsdk

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// fakeHost records what a cell does through the imports.
type fakeHost struct {
	emitRC  int32
	emitted []string
	logs    []string
}

func (h *fakeHost) Emit(stream string, data []byte) int32 {
	h.emitted = append(h.emitted, stream+":"+string(data))
	return h.emitRC
}
func (h *fakeHost) Send(string, []byte) int32   { return int32(ErrUnsupported) }
func (h *fakeHost) Log(level Level, msg string) { h.logs = append(h.logs, level.String()+" "+msg) }
func (h *fakeHost) Now() int64                  { return 42 }

func withHost(t *testing.T) *fakeHost {
	t.Helper()
	h := &fakeHost{}
	SetHost(h)
	t.Cleanup(func() {
		SetHost(nil)
		Handle(nil)
		Init(nil)
	})
	return h
}

func mustEncode(t *testing.T, b Batch) []byte {
	t.Helper()
	enc, err := EncodeBatch(b)
	if err != nil {
		t.Fatal(err)
	}
	return enc
}

func TestDispatch(t *testing.T) {
	batch := Batch{Input: "in", Records: []Record{{Offset: 3, Topic: "a/t1", Payload: []byte("1")}}}
	tests := []struct {
		name    string
		handler func(Batch) error
		emitRC  int32
		buf     []byte
		want    int32
		wantLog string
	}{
		{"ok", func(b Batch) error { return Emit("out", b.Records[0].Payload) }, 0, nil, 0, ""},
		{"emit refused", func(b Batch) error { return Emit("out", nil) }, -2, nil, -2, "rate limited"},
		{"plain error", func(Batch) error { return errors.New("boom") }, 0, nil, -100, "handler: boom"},
		{"cell code", func(Batch) error { return Fail(-250, "bad reading") }, 0, nil, -250, "bad reading"},
		{"panic", func(Batch) error { panic("oops") }, 0, nil, -102, "handler panicked: oops"},
		{"bad batch", func(Batch) error { return nil }, 0, []byte("CSB1"), -101, "malformed batch"},
		{"no handler", nil, 0, nil, -103, "no handler registered"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := withHost(t)
			h.emitRC = tt.emitRC
			Handle(tt.handler)
			buf := tt.buf
			if buf == nil {
				buf = mustEncode(t, batch)
			}
			if got := CallHandle(buf); got != tt.want {
				t.Errorf("CallHandle = %d, want %d (logs %q)", got, tt.want, h.logs)
			}
			if tt.wantLog != "" && !strings.Contains(strings.Join(h.logs, "\n"), tt.wantLog) {
				t.Errorf("logs %q, want one containing %q", h.logs, tt.wantLog)
			}
		})
	}
}

func TestInit(t *testing.T) {
	h := withHost(t)
	if rc := CallInit([]byte(`{}`)); rc != 0 {
		t.Errorf("no init function: rc %d, want 0", rc)
	}
	var got string
	Init(func(cfg []byte) error { got = string(cfg); return nil })
	if rc := CallInit([]byte(`{"a":1}`)); rc != 0 || got != `{"a":1}` {
		t.Errorf("rc %d, config %q", rc, got)
	}
	Init(func([]byte) error { return errors.New("missing field") })
	if rc := CallInit(nil); rc != int32(ErrInit) {
		t.Errorf("failing init: rc %d, want %d", rc, ErrInit)
	}
	Init(func([]byte) error { return Fail(-300, "no") })
	if rc := CallInit(nil); rc != -300 {
		t.Errorf("init with code: rc %d, want -300", rc)
	}
	Init(func([]byte) error { panic("x") })
	if rc := CallInit(nil); rc != int32(ErrPanic) {
		t.Errorf("panicking init: rc %d", rc)
	}
	if len(h.logs) != 3 {
		t.Errorf("want one error log per failure, got %q", h.logs)
	}
}

func TestImports(t *testing.T) {
	h := withHost(t)
	if !Now().Equal(time.Unix(0, 42)) {
		t.Errorf("Now = %v", Now())
	}
	Warnf("x=%d", 1)
	if h.logs[0] != "warn x=1" {
		t.Errorf("log %q", h.logs[0])
	}
	if err := Send("other", nil); !errors.Is(err, ErrUnsupported) {
		t.Errorf("Send = %v", err)
	}
}
