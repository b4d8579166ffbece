package streams

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"
)

const (
	stateName    = "state.json"
	stateVersion = 1
	// maxLost bounds the remembered dropped ranges; the oldest go first.
	maxLost = 256
)

// state is what a stream keeps next to its log, in dir/state.json: the
// cursors and the spill position. It is small and rewritten whole, each
// time atomically (temp file, fsync, rename, directory fsync).
type state struct {
	Version int `json:"version"`
	// SpilledThrough: every offset below it is in the object store, except
	// those in Lost.
	SpilledThrough uint64 `json:"spilled_through,omitempty"`
	// SpilledFrom is the first offset ever marked spilled (0: none).
	SpilledFrom  uint64 `json:"spilled_from,omitempty"`
	SpilledBytes int64  `json:"spilled_bytes,omitempty"`
	// Lost are ranges removed before they were spilled, above SpilledFrom:
	// holes in what the stream can still deliver.
	Lost    []span            `json:"lost,omitempty"`
	Cursors map[string]uint64 `json:"cursors,omitempty"`
}

// span is a range of offsets, both ends included.
type span struct {
	First uint64 `json:"first"`
	Last  uint64 `json:"last"`
}

func (st *state) clone() state {
	c := *st
	c.Lost = slices.Clone(st.Lost)
	c.Cursors = maps.Clone(st.Cursors)
	return c
}

// addLost records first..last as lost, merging it with the ranges it
// touches; the oldest ranges go when there are more than maxLost.
func (st *state) addLost(first, last uint64) {
	out := make([]span, 0, len(st.Lost)+1)
	placed := false
	for _, l := range st.Lost {
		switch {
		case l.Last+1 < first:
			out = append(out, l)
		case last+1 < l.First:
			if !placed {
				out = append(out, span{first, last})
				placed = true
			}
			out = append(out, l)
		default: // touches or overlaps: merge into the new range
			first, last = min(first, l.First), max(last, l.Last)
		}
	}
	if !placed {
		out = append(out, span{first, last})
	}
	slices.SortFunc(out, func(a, b span) int { return cmp.Compare(a.First, b.First) })
	if len(out) > maxLost {
		out = slices.Delete(out, 0, len(out)-maxLost)
	}
	st.Lost = out
}

// skipLost returns the first offset at or after off that is not in a lost
// range.
func (st *state) skipLost(off uint64) uint64 {
	for _, l := range st.Lost {
		if off >= l.First && off <= l.Last {
			off = l.Last + 1
		}
	}
	return off
}

// loadState reads dir/state.json. A missing file is an empty state. A file
// that cannot be parsed (it is written atomically, so only damage does
// that) is set aside and the stream starts with an empty state: cursors
// start over (redelivery, not loss) and spilled ranges are uploaded again,
// which beats a stream that cannot ingest.
func loadState(dir string, log *slog.Logger) (state, error) {
	path := filepath.Join(dir, stateName)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return state{Version: stateVersion}, nil
	}
	if err != nil {
		return state{}, fmt.Errorf("read %s: %w", path, err)
	}
	var st state
	err = json.Unmarshal(b, &st)
	if err == nil && st.Version != stateVersion {
		err = fmt.Errorf("unknown version %d", st.Version)
	}
	if err != nil {
		aside := path + ".bad-" + time.Now().UTC().Format("20060102T150405")
		log.Error("streams: state file is damaged; set aside, starting with no cursors and nothing spilled",
			"file", path, "moved_to", aside, "err", err)
		if rerr := os.Rename(path, aside); rerr != nil {
			return state{}, fmt.Errorf("set aside damaged %s: %w", path, rerr)
		}
		return state{Version: stateVersion}, nil
	}
	return st, nil
}

// persist writes the current state unless a write that started later has
// already done so: concurrent callers share writes, and each returns once
// the state including its own change is durable.
func (s *Stream) persist() error {
	s.mu.Lock()
	mine := s.stVer
	s.mu.Unlock()
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.written >= mine {
		return nil
	}
	s.mu.Lock()
	st := s.st.clone()
	ver := s.stVer
	s.mu.Unlock()
	b, err := json.Marshal(&st)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(s.dir, stateName), b, !s.opts.NoSync); err != nil {
		return fmt.Errorf("streams: %s: write state: %w", s.name, err)
	}
	s.written = ver
	return nil
}

// writeFileAtomic replaces path with data so that a crash leaves either
// the old or the new content: temp file, fsync, rename, fsync of the
// directory.
func writeFileAtomic(path string, data []byte, sync bool) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil && sync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if !sync {
		return nil
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
