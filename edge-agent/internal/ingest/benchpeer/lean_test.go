package benchpeer

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// leanPublisher is the load generator: a minimal MQTT 3.1.1 publisher
// over one TCP connection, so that the broker, not the client, is what a
// row measures. Per message, paho allocates a token and a timer, stores
// the message, hands it over a channel to its writer goroutine, makes one
// write for it, and routes its PUBACK back through more goroutines. This
// one encodes each PUBLISH with the broker library's codec (packets) into
// a buffer, writes everything its window allows with one write, and reads
// the PUBACKs on a second goroutine. It keeps no session state: it never
// resends, and a lost connection fails the row.
type leanPublisher struct {
	conn   net.Conn
	r      *bufio.Reader
	window int

	// ids holds the packet ids free to use: a publisher takes one to send
	// and the PUBACK returns it. Its capacity is the window, so an empty
	// channel means window messages are unacknowledged.
	ids chan uint16
	// sentAt is when each packet id in flight was written (see now); 0
	// while the id is free. The PUBACK reader swaps it back to 0.
	sentAt []atomic.Int64
	epoch  time.Time
}

// leanWriteBuffer is how many encoded bytes are written at once at most
// when the window is wide open.
const leanWriteBuffer = 64 << 10

func dialLean(url, id string, window int) (publisher, error) {
	if window < 1 || window > 65535 {
		return nil, fmt.Errorf("lean publisher: window %d: MQTT has packet ids 1..65535", window)
	}
	addr := strings.TrimPrefix(url, "tcp://")
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("lean publisher: %w", err)
	}
	p := &leanPublisher{
		conn:   conn,
		r:      bufio.NewReaderSize(conn, 64<<10),
		window: window,
		ids:    make(chan uint16, window),
		sentAt: make([]atomic.Int64, window+1),
		epoch:  time.Now(),
	}
	for i := 1; i <= window; i++ {
		p.ids <- uint16(i)
	}
	if err := p.connect(id); err != nil {
		conn.Close()
		return nil, err
	}
	return p, nil
}

// connect sends CONNECT (clean session, no keep-alive: the row keeps the
// connection busy and short) and waits for an accepting CONNACK.
func (p *leanPublisher) connect(id string) error {
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 4,
		Connect: packets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			Clean:            true,
			ClientIdentifier: id,
		},
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		return fmt.Errorf("lean publisher: encode CONNECT: %w", err)
	}
	if err := p.conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return err
	}
	if _, err := p.conn.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("lean publisher: send CONNECT: %w", err)
	}
	ack, err := p.read(nil)
	if err != nil {
		return fmt.Errorf("lean publisher: waiting for CONNACK: %w", err)
	}
	if ack.FixedHeader.Type != packets.Connack {
		return fmt.Errorf("lean publisher: got packet type %d, want CONNACK", ack.FixedHeader.Type)
	}
	if ack.ReasonCode != 0 {
		return fmt.Errorf("lean publisher: connection refused, CONNACK return code %d", ack.ReasonCode)
	}
	return p.conn.SetDeadline(time.Time{})
}

// read reads and decodes one CONNACK or PUBACK; body is a reusable
// buffer for the packet's remaining bytes.
func (p *leanPublisher) read(body []byte) (packets.Packet, error) {
	pk := packets.Packet{ProtocolVersion: 4}
	hb, err := p.r.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(hb); err != nil {
		return pk, err
	}
	n, _, err := packets.DecodeLength(p.r)
	if err != nil {
		return pk, err
	}
	pk.FixedHeader.Remaining = n
	if cap(body) < n {
		body = make([]byte, n)
	}
	body = body[:n]
	if _, err := io.ReadFull(p.r, body); err != nil {
		return pk, err
	}
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	default:
		err = fmt.Errorf("unexpected packet type %d", pk.FixedHeader.Type)
	}
	return pk, err
}

// publish sends n QoS 1 messages and returns each one's latency from the
// write of its PUBLISH to the arrival of its PUBACK. PUBACKs may come in
// any order.
func (p *leanPublisher) publish(topic string, payload []byte, n int) ([]time.Duration, error) {
	lat := make([]time.Duration, 0, n)
	var ackErr error
	acked := make(chan struct{}) // closed when readAcks returns
	go func() {
		defer close(acked)
		ackErr = p.readAcks(n, &lat)
	}()
	if err := p.send(topic, payload, n, acked, &ackErr); err != nil {
		p.conn.Close() // ends readAcks
		<-acked
		return nil, err
	}
	<-acked
	if ackErr != nil {
		return nil, ackErr
	}
	return lat, nil
}

// send writes n PUBLISH packets, at most window unacknowledged. A full
// window flushes what is buffered and waits for a PUBACK to free an id.
// readAcks ending first (acked closed, its error in *ackErr) stops it.
func (p *leanPublisher) send(topic string, payload []byte, n int, acked <-chan struct{}, ackErr *error) error {
	var out bytes.Buffer
	buffered := make([]uint16, 0, p.window)
	flush := func() error {
		if out.Len() == 0 {
			return nil
		}
		now := p.now()
		for _, id := range buffered {
			p.sentAt[id].Store(now)
		}
		buffered = buffered[:0]
		_, err := p.conn.Write(out.Bytes())
		out.Reset()
		return err
	}
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: 1},
		ProtocolVersion: 4,
		TopicName:       topic,
		Payload:         payload,
	}
	for range n {
		var id uint16
		select {
		case id = <-p.ids:
		default:
			if err := flush(); err != nil {
				return err
			}
			select {
			case id = <-p.ids:
			case <-acked:
				if *ackErr != nil {
					return *ackErr
				}
				return errors.New("lean publisher: PUBACKs ended before the last PUBLISH")
			}
		}
		pk.PacketID = id
		if err := pk.PublishEncode(&out); err != nil {
			return err
		}
		buffered = append(buffered, id)
		if out.Len() >= leanWriteBuffer {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// readAcks reads n PUBACKs, recording each one's latency and freeing its
// packet id for the sender.
func (p *leanPublisher) readAcks(n int, lat *[]time.Duration) error {
	body := make([]byte, 0, 16)
	for range n {
		pk, err := p.read(body)
		if err != nil {
			return fmt.Errorf("lean publisher: %d of %d PUBACKs: %w", len(*lat), n, err)
		}
		if pk.FixedHeader.Type != packets.Puback {
			return fmt.Errorf("lean publisher: got packet type %d, want PUBACK", pk.FixedHeader.Type)
		}
		id := pk.PacketID
		if int(id) < 1 || int(id) > p.window {
			return fmt.Errorf("lean publisher: PUBACK for packet id %d, never sent", id)
		}
		at := p.sentAt[id].Swap(0)
		if at == 0 {
			return fmt.Errorf("lean publisher: PUBACK for packet id %d, which is not in flight", id)
		}
		*lat = append(*lat, time.Duration(p.now()-at))
		p.ids <- id
	}
	return nil
}

// now is the monotonic time since the publisher was made, in nanoseconds
// plus one: never 0, which marks a free packet id.
func (p *leanPublisher) now() int64 { return int64(time.Since(p.epoch)) + 1 }

// close sends DISCONNECT, so the broker ends the session cleanly, and
// closes the connection.
func (p *leanPublisher) close() {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ProtocolVersion: 4}
	var buf bytes.Buffer
	if pk.DisconnectEncode(&buf) == nil {
		_ = p.conn.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = p.conn.Write(buf.Bytes())
	}
	p.conn.Close()
}
