package benchpeer

import (
	"errors"
	"fmt"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// pahoPublisher publishes with the paho client, as a Go sensor gateway
// would: one Publish call and one token per message. It shows what a
// typical client gets; on a small machine its per-message cost caps every
// peer near the same rate.
type pahoPublisher struct {
	c      paho.Client
	window int
}

func dialPaho(url, id string, window int) (publisher, error) {
	o := paho.NewClientOptions().AddBroker(url).SetClientID(id).SetCleanSession(true).
		SetAutoReconnect(false).SetConnectTimeout(10 * time.Second).SetWriteTimeout(30 * time.Second).
		SetKeepAlive(60 * time.Second)
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(15 * time.Second) {
		return nil, fmt.Errorf("paho: connect %s: no answer", url)
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("paho: connect %s: %w", url, err)
	}
	return &pahoPublisher{c: c, window: window}, nil
}

type sent struct {
	tok paho.Token
	at  time.Time
}

// publish sends n messages, at most window unacknowledged (slots holds a
// token for each). paho completes QoS 1 tokens in PUBACK order per
// connection, which is the publish order for every peer here, so one
// goroutine waits for them in turn.
func (p *pahoPublisher) publish(topic string, payload []byte, n int) ([]time.Duration, error) {
	lat := make([]time.Duration, 0, n)
	slots := make(chan struct{}, p.window)
	queue := make(chan sent, p.window)
	var waitErr error
	waited := make(chan struct{})
	go func() {
		defer close(waited)
		for s := range queue {
			switch {
			case waitErr != nil: // drain, so the sender never blocks
			case !s.tok.WaitTimeout(time.Minute):
				waitErr = errors.New("paho: no PUBACK within a minute")
			case s.tok.Error() != nil:
				waitErr = fmt.Errorf("paho: %w", s.tok.Error())
			default:
				lat = append(lat, time.Since(s.at))
			}
			<-slots
		}
	}()
	for range n {
		slots <- struct{}{}
		at := time.Now()
		queue <- sent{p.c.Publish(topic, 1, false, payload), at}
	}
	close(queue)
	<-waited
	return lat, waitErr
}

func (p *pahoPublisher) close() { p.c.Disconnect(50) }
