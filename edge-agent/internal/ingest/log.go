package ingest

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// limiter logs each kind of warning (by message) at most once per interval
// and says how many it held back meanwhile: a full stream under load would
// otherwise log once per message. The Stats counters are exact.
type limiter struct {
	log      *slog.Logger
	interval time.Duration // 0 means 10 s

	mu    sync.Mutex
	kinds map[string]*limited
}

type limited struct {
	last       time.Time
	suppressed int
}

func (l *limiter) Warn(msg string, args ...any) {
	interval := l.interval
	if interval == 0 {
		interval = 10 * time.Second
	}
	now := time.Now()
	l.mu.Lock()
	if l.kinds == nil {
		l.kinds = make(map[string]*limited)
	}
	k := l.kinds[msg]
	if k == nil {
		k = &limited{}
		l.kinds[msg] = k
	}
	if !k.last.IsZero() && now.Sub(k.last) < interval {
		k.suppressed++
		l.mu.Unlock()
		return
	}
	n := k.suppressed
	k.last, k.suppressed = now, 0
	l.mu.Unlock()
	if n > 0 {
		args = append(args, "suppressed_since_last", n)
	}
	l.log.Warn(msg, args...)
}

// quieter drops records below min: the broker library logs every packet a
// hook rejects at debug level, which is every durable message here.
type quieter struct {
	slog.Handler
	min slog.Level
}

func (q quieter) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= q.min && q.Handler.Enabled(ctx, l)
}

func (q quieter) WithAttrs(as []slog.Attr) slog.Handler {
	return quieter{q.Handler.WithAttrs(as), q.min}
}

func (q quieter) WithGroup(name string) slog.Handler {
	return quieter{q.Handler.WithGroup(name), q.min}
}
