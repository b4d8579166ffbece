package ingest

import "sync"

// queue keeps one connection's messages in the order they arrived and hands
// each, once the sink is done with it, to finish — in that same order, from
// one goroutine (run). Commits to different streams finish in any order;
// acknowledgements and local deliveries must not overtake each other.
//
// At most max messages, and maxBytes bytes of them, are outstanding
// (admitted and not yet finished); admit waits for room, which is how a
// publisher that outruns the disk is slowed down. A single message larger
// than maxBytes is let in when nothing else is outstanding.
type queue[T any] struct {
	max      int
	maxBytes int
	finish   func(*item[T])
	onWait   func() // if set, called each time admit starts waiting for room

	mu          sync.Mutex
	items       []*item[T] // admitted and not yet taken by run; oldest first
	outstanding int        // admitted and not yet finished
	bytes       int        // their sizes

	wake     chan struct{} // cap 1: the oldest item may be complete
	room     chan struct{} // cap 1: outstanding went down
	stop     chan struct{} // closed by close: the connection is gone
	stopOnce sync.Once
}

// item is one message in a queue.
type item[T any] struct {
	v        T
	size     int
	complete bool          // the sink is done, or no stream matched
	err      error         // the sink's error
	durable  bool          // the sink took it (false: no stream matched)
	wait     chan struct{} // if not nil, closed once finished (or dropped)
}

func newQueue[T any](max, maxBytes int, finish func(*item[T])) *queue[T] {
	return &queue[T]{
		max:      max,
		maxBytes: maxBytes,
		finish:   finish,
		wake:     make(chan struct{}, 1),
		room:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
	}
}

// admit appends v, waiting while max messages are outstanding; ok is false
// if the queue was closed meanwhile. withWait gives the item a channel that
// is closed once it is finished.
func (q *queue[T]) admit(v T, size int, withWait bool) (it *item[T], ok bool) {
	q.mu.Lock()
	for q.full(size) {
		q.mu.Unlock()
		if q.onWait != nil {
			q.onWait()
		}
		select {
		case <-q.room:
		case <-q.stop:
			return nil, false
		}
		q.mu.Lock()
	}
	it = &item[T]{v: v, size: size}
	if withWait {
		it.wait = make(chan struct{})
	}
	q.items = append(q.items, it)
	q.outstanding++
	q.bytes += size
	q.mu.Unlock()
	return it, true
}

// full tells whether a message of size must wait. q.mu must be held.
func (q *queue[T]) full(size int) bool {
	return q.outstanding >= q.max || (q.outstanding > 0 && q.bytes+size > q.maxBytes)
}

// tryAdmit appends v if fewer than max messages are outstanding and the
// queue is open, without waiting.
func (q *queue[T]) tryAdmit(v T, size int) (*item[T], bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.full(size) || q.closed() {
		return nil, false
	}
	it := &item[T]{v: v, size: size}
	q.items = append(q.items, it)
	q.outstanding++
	q.bytes += size
	return it, true
}

// complete records the sink's result for it. Safe from any goroutine, also
// after close; a second call for the same item is ignored.
func (q *queue[T]) complete(it *item[T], err error) {
	q.mu.Lock()
	if it.complete {
		q.mu.Unlock()
		return
	}
	it.complete, it.err, it.durable = true, err, true
	head := len(q.items) > 0 && q.items[0] == it
	q.mu.Unlock()
	if head {
		signal(q.wake)
	}
}

// pass marks an item no stream matched as complete: it is finished in its
// turn like a stored one.
func (q *queue[T]) pass(it *item[T]) {
	q.mu.Lock()
	it.complete = true
	head := len(q.items) > 0 && q.items[0] == it
	q.mu.Unlock()
	if head {
		signal(q.wake)
	}
}

// bypass is for an item no stream matched. If nothing is outstanding before
// it, it is removed and bypass returns true: the broker may handle the
// message itself right away without overtaking anything. Otherwise it is
// marked complete and finished in its turn.
func (q *queue[T]) bypass(it *item[T]) bool {
	q.mu.Lock()
	if q.outstanding == 1 && len(q.items) == 1 && q.items[0] == it {
		q.items[0] = nil
		q.items = q.items[:0]
		q.outstanding, q.bytes = 0, 0
		q.mu.Unlock()
		return true
	}
	it.complete = true
	head := q.items[0] == it
	q.mu.Unlock()
	if head {
		signal(q.wake)
	}
	return false
}

// run finishes complete items in order until close.
func (q *queue[T]) run() {
	var batch []*item[T]
	for {
		select {
		case <-q.wake:
		case <-q.stop:
			return
		}
		for {
			q.mu.Lock()
			n := 0
			for n < len(q.items) && q.items[n].complete {
				n++
			}
			batch = append(batch[:0], q.items[:n]...)
			clear(q.items[:n]) // let finished payloads go
			q.items = q.items[n:]
			q.mu.Unlock()
			if n == 0 {
				break
			}
			size := 0
			for _, it := range batch {
				if !q.closed() {
					q.finish(it)
				}
				if it.wait != nil {
					close(it.wait)
				}
				size += it.size
			}
			clear(batch)
			q.mu.Lock()
			q.outstanding -= n
			q.bytes -= size
			q.mu.Unlock()
			signal(q.room)
		}
	}
}

// close stops run and wakes an admit or a wait in progress. Items still
// outstanding are dropped: their connection is gone, so their
// acknowledgements have nowhere to go and the client will resend them.
func (q *queue[T]) close() { q.stopOnce.Do(func() { close(q.stop) }) }

func (q *queue[T]) closed() bool {
	select {
	case <-q.stop:
		return true
	default:
		return false
	}
}

// signal wakes the receiver of a one-slot channel without blocking.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}
