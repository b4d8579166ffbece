package journal

import "runtime"

// Commit appends data like Append, but lets concurrent callers share one
// write and one fsync: while one group is being written, the callers that
// arrive queue up, and the first of them writes the whole queue as the next
// group. Each caller returns once its own records are durable (or with the
// error of its group). There is no timer and no background goroutine; a
// caller waits for at most the group in progress and its own.
//
// The quota is checked per caller: within a group, a caller whose batch does
// not fit gets ErrFull while the others are written.
func (j *Journal) Commit(data ...[]byte) (first, last uint64, err error) {
	if len(data) == 0 {
		return 0, 0, nil
	}
	r := &request{data: data, done: make(chan struct{})}
	j.qmu.Lock()
	j.queue = append(j.queue, r)
	if j.leading {
		j.qmu.Unlock()
		<-r.done
		if !r.lead {
			return r.first, r.last, r.err
		}
		// The previous leader handed over: r heads the queue.
		j.qmu.Lock()
	} else {
		j.leading = true
	}
	// Let writers that are ready to run (those the last group released,
	// above all) join this group first. Without this, on one CPU the leader
	// runs on into its fsync before anyone else can queue, and groups stay
	// at one record.
	j.qmu.Unlock()
	runtime.Gosched()
	j.qmu.Lock()
	group := j.queue
	j.queue = nil
	j.qmu.Unlock()

	j.mu.Lock()
	j.appendLocked(group)
	j.mu.Unlock()
	for _, g := range group {
		if g != r {
			close(g.done)
		}
	}

	j.qmu.Lock()
	if len(j.queue) > 0 {
		next := j.queue[0]
		next.lead = true
		close(next.done)
	} else {
		j.leading = false
	}
	j.qmu.Unlock()
	return r.first, r.last, r.err
}
