// Package rpc lets the console ask a node something and wait for the answer:
// a protocol.Request published on nodes/{node}/requests, answered by a
// protocol.Reply on nodes/{node}/replies. Nodes sit behind NAT and reach the
// console only over MQTT, so this is how the console reads what only a node
// holds (a stream's local records). A request to an offline node times out;
// nothing is queued for later.
package rpc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cloudskin/cloudskin/shared/protocol"
)

// ErrTimeout means the node did not answer in time (offline, or busy).
var ErrTimeout = errors.New("rpc: node did not answer in time")

// Publisher sends a message (the console's MQTT bus).
type Publisher func(topic string, payload []byte, retain bool) error

// Caller matches replies to the requests waiting for them.
type Caller struct {
	pub     Publisher
	topics  protocol.Topics
	log     *slog.Logger
	timeout time.Duration

	mu      sync.Mutex
	pending map[string]pending
}

type pending struct {
	node string
	ch   chan protocol.Reply
}

// New returns a Caller that publishes through pub and waits at most timeout
// (0: 10 s) for an answer.
func New(pub Publisher, topics protocol.Topics, timeout time.Duration, log *slog.Logger) *Caller {
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	return &Caller{pub: pub, topics: topics, log: log, timeout: timeout, pending: map[string]pending{}}
}

// Call sends req to node and returns its reply. The request's ID is set here.
func (c *Caller) Call(ctx context.Context, node string, req protocol.Request) (protocol.Reply, error) {
	var id [12]byte
	rand.Read(id[:])
	req.ID = hex.EncodeToString(id[:])
	ch := make(chan protocol.Reply, 1)
	c.mu.Lock()
	c.pending[req.ID] = pending{node: node, ch: ch}
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, req.ID)
		c.mu.Unlock()
	}()
	b, err := json.Marshal(req)
	if err != nil {
		return protocol.Reply{}, err
	}
	if err := c.pub(c.topics.Node(node, protocol.LeafRequests), b, false); err != nil {
		return protocol.Reply{}, fmt.Errorf("rpc: send to %s: %w", node, err)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	select {
	case r := <-ch:
		return r, nil
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return protocol.Reply{}, fmt.Errorf("%w: %s, %s", ErrTimeout, node, req.Method)
		}
		return protocol.Reply{}, ctx.Err()
	}
}

// Deliver hands a reply from node to the request waiting for it. A reply
// nobody waits for (late, or forged with another node's request id) is
// dropped.
func (c *Caller) Deliver(node string, payload []byte) {
	var r protocol.Reply
	if err := json.Unmarshal(payload, &r); err != nil {
		c.log.Warn("malformed reply dropped", "node", node, "err", err)
		return
	}
	c.mu.Lock()
	p, ok := c.pending[r.ID]
	c.mu.Unlock()
	if !ok || p.node != node {
		c.log.Debug("unexpected reply dropped", "node", node, "id", r.ID)
		return
	}
	select {
	case p.ch <- r:
	default:
	}
}
