package agent

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/cloudskin/cloudskin/edge-agent/internal/streams"
	"github.com/cloudskin/cloudskin/shared/segment"
)

// Spilling: each stream with Spill on has an uploader that takes the oldest
// sealed range of records, encodes it as one segment blob, asks the console
// where to put it (its own blob endpoint or a presigned S3 URL: the node never
// holds storage credentials), uploads it under the node's bandwidth cap, and
// asks the console to commit it. Only the console's commit — it checked size
// and checksum in the store — lets the stream mark the range spilled, after
// which its local copy may be deleted. Every failure is retried with backoff,
// oldest range first, so an outage of hours drains in order afterwards.

const (
	spillRecordsPerRead = 4096
	spillMinBackoff     = time.Second
	spillMaxBackoff     = time.Minute
)

// spillClient is shared by the uploaders: the console's HTTP client, the
// bandwidth cap and the rehydration cache.
type spillClient struct {
	a       *Agent
	http    *http.Client
	limiter *rate.Limiter // nil: no cap
	cache   *segmentCache
}

func newSpillClient(a *Agent) *spillClient {
	c := &spillClient{a: a, http: &http.Client{Timeout: 10 * time.Minute}}
	if bps := a.cfg.SpillBandwidth; bps > 0 {
		// Bursts of at most 64 KiB keep the uplink share smooth.
		c.limiter = rate.NewLimiter(rate.Limit(bps), int(min(bps, 64<<10)))
	}
	c.cache = &segmentCache{dir: filepath.Join(a.cfg.Data, "rehydrated"), max: a.cfg.RehydrateCacheBytes}
	return c
}

func (m *streamManager) startUploader(e *streamEntry) {
	if !e.s.Spec().Spill || m.spill == nil {
		return
	}
	e.stop, e.done = make(chan struct{}), make(chan struct{})
	go m.uploader(e.s, e.stop, e.done)
}

func (m *streamManager) restartUploader(e *streamEntry) {
	if e.stop != nil {
		close(e.stop)
		<-e.done
		e.stop = nil
	}
	m.startUploader(e)
}

func (m *streamManager) uploader(s *streams.Stream, stop, done chan struct{}) {
	defer close(done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	name := s.Spec().Name
	log := m.log.With("stream", name)
	backoff := spillMinBackoff
	for {
		first, last, ok := s.NextSealed()
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
				continue
			}
		}
		n, err := m.spill.upload(ctx, s, first, last)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			s.SetUploadError(err)
			log.Warn("segment upload failed; will retry", "first", first, "last", last, "err", err, "in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, spillMaxBackoff)
			continue
		}
		s.SetUploadError(nil)
		backoff = spillMinBackoff
		if err := s.MarkSpilled(last+1, n); err != nil {
			log.Error("segment uploaded but not marked spilled; it will be uploaded again", "first", first, "last", last, "err", err)
			continue
		}
		log.Debug("segment spilled", "first", first, "last", last, "bytes", n)
	}
}

// upload sends records first..last as one segment and returns its size.
func (c *spillClient) upload(ctx context.Context, s *streams.Stream, first, last uint64) (int64, error) {
	spec := s.Spec()
	var recs []segment.Record
	for next := first; next <= last; {
		batch, err := s.Read(next, int(min(last-next+1, spillRecordsPerRead)), 64<<20)
		if err != nil {
			return 0, fmt.Errorf("read %d: %w", next, err)
		}
		if len(batch) == 0 {
			return 0, fmt.Errorf("read %d: no records below %d", next, last+1)
		}
		for _, r := range batch {
			if r.Offset > last {
				break
			}
			recs = append(recs, segment.Record{Offset: r.Offset, Time: r.Time, Topic: r.Topic, Headers: r.Headers, Payload: r.Payload})
		}
		next = batch[len(batch)-1].Offset + 1
	}
	hdr := segment.Header{Node: c.a.cfg.Name, Stream: spec.Name, First: first, Last: last, Count: uint64(len(recs))}
	for i, r := range recs {
		if i == 0 || r.Time.Before(hdr.MinTime) {
			hdr.MinTime = r.Time
		}
		if r.Time.After(hdr.MaxTime) {
			hdr.MaxTime = r.Time
		}
	}
	if len(recs) == 0 {
		return 0, fmt.Errorf("range %d..%d holds no readable record", first, last)
	}
	blob, err := segment.Encode(hdr, recs)
	if err != nil {
		return 0, err
	}
	sum, md := sha256.Sum256(blob), md5.Sum(blob)
	base := strings.TrimRight(c.a.cfg.Console, "/") + "/api/v1/nodes/" + c.a.cfg.Name + "/streams/" + spec.Name + "/segments"
	var target struct {
		ID        string `json:"id"`
		Committed bool   `json:"committed"`
		Upload    struct {
			Method  string            `json:"method"`
			URL     string            `json:"url"`
			Headers map[string]string `json:"headers"`
		} `json:"upload"`
	}
	req := map[string]any{
		"first": first, "last": last, "count": hdr.Count, "min_time": hdr.MinTime.UTC(), "max_time": hdr.MaxTime.UTC(),
		"bytes": len(blob), "sha256": hex.EncodeToString(sum[:]), "md5": hex.EncodeToString(md[:]),
	}
	if err := c.consoleJSON(ctx, http.MethodPost, base, req, &target); err != nil {
		return 0, fmt.Errorf("upload target: %w", err)
	}
	if !target.Committed {
		if err := c.put(ctx, target.Upload.Method, target.Upload.URL, target.Upload.Headers, blob); err != nil {
			return 0, fmt.Errorf("upload: %w", err)
		}
		if err := c.consoleJSON(ctx, http.MethodPost, base+"/"+url.PathEscape(target.ID)+"/commit", nil, &target); err != nil {
			return 0, fmt.Errorf("commit: %w", err)
		}
		if !target.Committed {
			return 0, errors.New("commit: console did not confirm the segment")
		}
	}
	return int64(len(blob)), nil
}

// consoleJSON calls the console with the node's credential.
func (c *spillClient) consoleJSON(ctx context.Context, method, u string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	req.SetBasicAuth(c.a.cred.Node, c.a.cred.Secret)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %s: %s", method, u, resp.Status, strings.TrimSpace(string(b)))
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// put uploads blob to a target URL under the bandwidth cap.
func (c *spillClient) put(ctx context.Context, method, u string, headers map[string]string, blob []byte) error {
	if method == "" {
		method = http.MethodPut
	}
	// The console's own blob endpoint comes as a path (signed in its query);
	// an object store's as a presigned absolute URL.
	if strings.HasPrefix(u, "/") {
		u = strings.TrimRight(c.a.cfg.Console, "/") + u
	}
	var body io.Reader = bytes.NewReader(blob)
	if c.limiter != nil {
		body = &limitedReader{ctx: ctx, r: body, l: c.limiter}
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	req.ContentLength = int64(len(blob))
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	return nil
}

// limitedReader paces reads by a token bucket.
type limitedReader struct {
	ctx context.Context
	r   io.Reader
	l   *rate.Limiter
}

func (r *limitedReader) Read(p []byte) (int, error) {
	if len(p) > r.l.Burst() {
		p = p[:r.l.Burst()]
	}
	n, err := r.r.Read(p)
	if n > 0 {
		if werr := r.l.WaitN(r.ctx, n); werr != nil {
			return n, werr
		}
	}
	return n, err
}

// readAny reads a stream from offset from on, from the node's disk or, for
// offsets only the object store still holds, from a spilled segment fetched
// back through the console (rehydration; kept in a bounded local cache).
func (m *streamManager) readAny(ctx context.Context, s *streams.Stream, from uint64, max, maxBytes int) ([]streams.Record, error) {
	recs, err := s.Read(from, max, maxBytes)
	if !errors.Is(err, streams.ErrNotLocal) {
		return recs, err
	}
	if m.spill == nil {
		return nil, err
	}
	segRecs, err := m.spill.rehydrate(ctx, s.Spec().Name, from)
	if err != nil {
		return nil, fmt.Errorf("offset %d is only in the object store: %w", from, err)
	}
	out := make([]streams.Record, 0, min(len(segRecs), max))
	size := 0
	for _, r := range segRecs {
		if r.Offset < from {
			continue
		}
		if len(out) >= max || (len(out) > 0 && size+len(r.Payload) > maxBytes) {
			break
		}
		out = append(out, streams.Record{Offset: r.Offset, Time: r.Time, Topic: r.Topic, Headers: r.Headers, Payload: r.Payload})
		size += len(r.Payload)
	}
	return out, nil
}

// rehydrate returns the records of the spilled segment holding offset from.
func (c *spillClient) rehydrate(ctx context.Context, stream string, from uint64) ([]segment.Record, error) {
	if recs, ok := c.cache.get(stream, from); ok {
		return recs, nil
	}
	base := strings.TrimRight(c.a.cfg.Console, "/") + "/api/v1/nodes/" + c.a.cfg.Name + "/streams/" + stream + "/segments"
	var list struct {
		Segments []struct {
			ID    string `json:"id"`
			First uint64 `json:"first"`
			Last  uint64 `json:"last"`
		} `json:"segments"`
	}
	if err := c.consoleJSON(ctx, http.MethodGet, base+"?from="+strconv.FormatUint(from, 10)+"&limit=1", nil, &list); err != nil {
		return nil, err
	}
	if len(list.Segments) == 0 || list.Segments[0].First > from || list.Segments[0].Last < from {
		// Older than anything stored (expired, or dropped before spilling).
		return nil, fmt.Errorf("no spilled segment holds offset %d", from)
	}
	seg := list.Segments[0]
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/"+url.PathEscape(seg.ID)+"/blob", nil)
	if err != nil {
		return nil, err
	}
	req.SetBasicAuth(c.a.cred.Node, c.a.cred.Secret)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("segment %s: %s", seg.ID, resp.Status)
	}
	blob, err := io.ReadAll(io.LimitReader(resp.Body, 1<<30))
	if err != nil {
		return nil, err
	}
	_, recs, err := segment.Decode(blob)
	if err != nil {
		return nil, fmt.Errorf("segment %s: %w", seg.ID, err)
	}
	c.cache.put(stream, seg.First, seg.Last, blob)
	return recs, nil
}

// segmentCache keeps fetched segments on disk, up to max bytes, evicting
// the least recently used.
type segmentCache struct {
	dir string
	max int64
	mu  sync.Mutex
}

func (c *segmentCache) path(stream string, first, last uint64) string {
	return filepath.Join(c.dir, stream, fmt.Sprintf("%020d-%020d.seg", first, last))
}

func (c *segmentCache) get(stream string, off uint64) ([]segment.Record, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ents, err := os.ReadDir(filepath.Join(c.dir, stream))
	if err != nil {
		return nil, false
	}
	for _, e := range ents {
		var first, last uint64
		if _, err := fmt.Sscanf(e.Name(), "%020d-%020d.seg", &first, &last); err != nil || off < first || off > last {
			continue
		}
		p := filepath.Join(c.dir, stream, e.Name())
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, false
		}
		_, recs, err := segment.Decode(b)
		if err != nil {
			os.Remove(p) // damaged: fetch again
			return nil, false
		}
		now := time.Now()
		os.Chtimes(p, now, now)
		return recs, true
	}
	return nil, false
}

func (c *segmentCache) put(stream string, first, last uint64, blob []byte) {
	if c.max <= 0 || int64(len(blob)) > c.max {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.path(stream, first, last)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return
	}
	tmp := p + ".tmp"
	if os.WriteFile(tmp, blob, 0o600) != nil || os.Rename(tmp, p) != nil {
		os.Remove(tmp)
		return
	}
	// Evict least recently used files beyond the cap.
	type file struct {
		path string
		size int64
		at   time.Time
	}
	var files []file
	var total int64
	filepath.WalkDir(c.dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".seg") {
			return nil
		}
		if info, err := d.Info(); err == nil {
			files = append(files, file{path, info.Size(), info.ModTime()})
			total += info.Size()
		}
		return nil
	})
	sort.Slice(files, func(i, j int) bool { return files[i].at.Before(files[j].at) })
	for _, f := range files {
		if total <= c.max {
			break
		}
		if f.path == p {
			continue
		}
		os.Remove(f.path)
		total -= f.size
	}
}
