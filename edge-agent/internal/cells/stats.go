package cells

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Stats is a snapshot of one cell's counters.
type Stats struct {
	Invocations   uint64        // Handle calls that reached the cell
	Records       uint64        // records handed to the cell
	Errors        uint64        // Handle calls that failed (handler errors, traps, fuel, timeouts)
	HandlerErrors uint64        // negative results of cloudskin_handle
	Traps         uint64        // traps of any kind, including fuel and timeouts
	FuelExhausted uint64        // calls stopped for lack of fuel
	Timeouts      uint64        // calls stopped by the wall-clock bound
	FuelConsumed  uint64        // total fuel used by every call into the cell
	MemoryBytes   uint64        // current linear memory size
	LatencyP50    time.Duration // of recent Handle calls
	LatencyP99    time.Duration
	Emitted       uint64 // records delivered to the Output
	RateLimited   uint64 // emits refused with ERR_RATE_LIMITED
	LogDropped    uint64 // log and stdout/stderr lines dropped by the log rate limit
	Running       bool   // false once the cell trapped or was closed
}

// EventKind names what happened to a cell.
type EventKind string

const (
	EventStarted      EventKind = "started"
	EventTrap         EventKind = "trap"
	EventFuel         EventKind = "fuel"
	EventTimeout      EventKind = "timeout"
	EventHandlerError EventKind = "handler_error"
	EventInitFailed   EventKind = "init_failed"
	EventStopped      EventKind = "stopped"
	EventSnapshot     EventKind = "snapshot" // its state was captured (it keeps running)
	EventRestored     EventKind = "restored" // it started from a snapshot instead of its init
)

// Event is one entry of a cell's recent history.
type Event struct {
	Time    time.Time
	Kind    EventKind
	Message string
}

const (
	latencyRing = 256
	eventRing   = 64
)

// cellStats is written by the goroutine calling the cell and read by Stats from any
// goroutine: counters touched by host imports are atomics, the rest sit under mu.
type cellStats struct {
	emitted, rateLimited, logDropped atomic.Uint64

	mu            sync.Mutex
	invocations   uint64
	records       uint64
	errors        uint64
	handlerErrors uint64
	traps         uint64
	fuelExhausted uint64
	timeouts      uint64
	fuel          uint64
	memBytes      uint64
	running       bool
	lat           [latencyRing]time.Duration
	latN          int // total latencies recorded
	events        [eventRing]Event
	evN           int
}

func (s *cellStats) event(kind EventKind, msg string) {
	s.mu.Lock()
	s.events[s.evN%eventRing] = Event{Time: time.Now(), Kind: kind, Message: msg}
	s.evN++
	s.mu.Unlock()
}

func (s *cellStats) snapshot() Stats {
	s.mu.Lock()
	n := min(s.latN, latencyRing)
	lat := slices.Clone(s.lat[:n])
	st := Stats{
		Invocations:   s.invocations,
		Records:       s.records,
		Errors:        s.errors,
		HandlerErrors: s.handlerErrors,
		Traps:         s.traps,
		FuelExhausted: s.fuelExhausted,
		Timeouts:      s.timeouts,
		FuelConsumed:  s.fuel,
		MemoryBytes:   s.memBytes,
		Running:       s.running,
	}
	s.mu.Unlock()
	st.Emitted = s.emitted.Load()
	st.RateLimited = s.rateLimited.Load()
	st.LogDropped = s.logDropped.Load()
	if n > 0 {
		slices.Sort(lat)
		st.LatencyP50 = lat[(n-1)*50/100]
		st.LatencyP99 = lat[(n-1)*99/100]
	}
	return st
}

func (s *cellStats) recentEvents() []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := min(s.evN, eventRing)
	out := make([]Event, 0, n)
	for i := s.evN - n; i < s.evN; i++ {
		out = append(out, s.events[i%eventRing])
	}
	return out
}

// bucket is a token bucket; rate tokens per second, burst tokens at most.
type bucket struct {
	mu     sync.Mutex
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func newBucket(rate float64, now time.Time) *bucket {
	burst := max(rate, 1)
	return &bucket{rate: rate, burst: burst, tokens: burst, last: now}
}

func (b *bucket) take(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if dt := now.Sub(b.last).Seconds(); dt > 0 {
		b.tokens = min(b.burst, b.tokens+dt*b.rate)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
