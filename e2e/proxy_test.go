package e2e

import (
	"io"
	"net"
	"sync"
	"testing"
)

// uplink is a TCP proxy between an agent and its broker that the test can
// cut and restore, like a node's cellular or satellite link.
type uplink struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]struct{}
}

func newUplink(t *testing.T, target string) *uplink {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &uplink{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	go u.serve()
	t.Cleanup(func() { ln.Close(); u.Cut() })
	return u
}

func (u *uplink) url() string { return "tcp://" + u.ln.Addr().String() }

func (u *uplink) serve() {
	for {
		c, err := u.ln.Accept()
		if err != nil {
			return
		}
		u.mu.Lock()
		if u.cut {
			u.mu.Unlock()
			c.Close()
			continue
		}
		b, err := net.Dial("tcp", u.target)
		if err != nil {
			u.mu.Unlock()
			c.Close()
			continue
		}
		u.conns[c], u.conns[b] = struct{}{}, struct{}{}
		u.mu.Unlock()
		go u.pipe(c, b)
		go u.pipe(b, c)
	}
}

func (u *uplink) pipe(dst, src net.Conn) {
	io.Copy(dst, src)
	dst.Close()
	src.Close()
	u.mu.Lock()
	delete(u.conns, dst)
	delete(u.conns, src)
	u.mu.Unlock()
}

// Cut drops every connection and refuses new ones.
func (u *uplink) Cut() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.cut = true
	for c := range u.conns {
		c.Close()
	}
}

// Restore accepts connections again.
func (u *uplink) Restore() {
	u.mu.Lock()
	u.cut = false
	u.mu.Unlock()
}
