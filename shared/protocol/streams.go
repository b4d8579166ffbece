package protocol

import (
	"fmt"
	"regexp"
	"time"
)

// Stream on-full policies.
const (
	OnFullReject     = "reject-new"  // refuse new records; publishers feel back-pressure
	OnFullDropOldest = "drop-oldest" // delete the oldest local records, each one counted
)

// StreamSpec declares one durable stream on a node: an append-only log fed by
// the MQTT topic filters Topics on the node's ingestion broker. Zero values
// take the agent's defaults (docs/streams.md).
type StreamSpec struct {
	Name   string   `json:"name" yaml:"name"`
	Topics []string `json:"topics" yaml:"topics"`
	// SegmentBytes is the size at which the local log starts a new segment
	// and, with Spill, the size of a spilled segment.
	SegmentBytes int64 `json:"segment_bytes,omitempty" yaml:"segment_bytes"`
	// QuotaBytes is a hard cap on the stream's local disk use.
	QuotaBytes int64 `json:"quota_bytes,omitempty" yaml:"quota_bytes"`
	// RetentionSeconds and RetentionBytes bound how long and how much the node
	// keeps locally. With Spill, only records already in the object store are
	// removed by retention; without it, retention removes any record.
	RetentionSeconds int64  `json:"retention_seconds,omitempty" yaml:"retention_seconds"`
	RetentionBytes   int64  `json:"retention_bytes,omitempty" yaml:"retention_bytes"`
	OnFull           string `json:"on_full,omitempty" yaml:"on_full"` // OnFullReject (default) or OnFullDropOldest
	Spill            bool   `json:"spill,omitempty" yaml:"spill"`
	// SealSeconds seals a segment for spilling once its oldest record is this
	// old even if it is not full, so a slow stream still reaches the cloud.
	SealSeconds int64 `json:"seal_seconds,omitempty" yaml:"seal_seconds"`
}

var streamNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$`)

// ValidateStreamName checks a stream name: 1-63 lowercase letters, digits,
// '-' or '_' (it names a directory on the node and a key prefix in the store).
func ValidateStreamName(name string) error {
	if !streamNameRE.MatchString(name) {
		return invalid("stream name %q: use 1-63 lowercase letters, digits, '-' or '_'", name)
	}
	return nil
}

// Validate checks a stream spec's shape.
func (s *StreamSpec) Validate() error {
	if err := ValidateStreamName(s.Name); err != nil {
		return err
	}
	if len(s.Topics) == 0 || len(s.Topics) > 16 {
		return invalid("stream %s: needs 1-16 topic filters", s.Name)
	}
	for _, t := range s.Topics {
		if err := ValidateFilter(t); err != nil {
			return invalid("stream %s: %v", s.Name, err)
		}
	}
	if s.SegmentBytes < 0 || s.QuotaBytes < 0 || s.RetentionSeconds < 0 || s.RetentionBytes < 0 || s.SealSeconds < 0 {
		return invalid("stream %s: sizes and durations must not be negative", s.Name)
	}
	if s.SegmentBytes != 0 && (s.SegmentBytes < 4<<10 || s.SegmentBytes > 1<<30) {
		return invalid("stream %s: segment_bytes must be between 4 KiB and 1 GiB", s.Name)
	}
	if s.QuotaBytes != 0 && s.SegmentBytes != 0 && s.QuotaBytes < 4*s.SegmentBytes {
		return invalid("stream %s: quota_bytes must be at least 4 segments (%d bytes)", s.Name, 4*s.SegmentBytes)
	}
	switch s.OnFull {
	case "", OnFullReject, OnFullDropOldest:
	default:
		return invalid("stream %s: on_full %q: use %q or %q", s.Name, s.OnFull, OnFullReject, OnFullDropOldest)
	}
	return nil
}

// ValidateFilter checks an MQTT topic filter: non-empty, '+' and '#' only as
// whole levels, '#' only last.
func ValidateFilter(f string) error {
	if f == "" || len(f) > 1024 {
		return fmt.Errorf("topic filter %q: must be 1-1024 bytes", f)
	}
	levels := splitLevels(f)
	for i, l := range levels {
		switch {
		case l == "#" && i != len(levels)-1:
			return fmt.Errorf("topic filter %q: '#' must be the last level", f)
		case l != "#" && l != "+" && (containsByte(l, '#') || containsByte(l, '+')):
			return fmt.Errorf("topic filter %q: wildcards must fill a whole level", f)
		}
	}
	return nil
}

// MatchFilter reports whether topic matches the MQTT filter.
func MatchFilter(filter, topic string) bool {
	fl, tl := splitLevels(filter), splitLevels(topic)
	for i, f := range fl {
		if f == "#" {
			return true
		}
		if i >= len(tl) || (f != "+" && f != tl[i]) {
			return false
		}
	}
	return len(fl) == len(tl)
}

func splitLevels(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '/' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

func containsByte(s string, b byte) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == b {
			return true
		}
	}
	return false
}

// StreamStatus is one stream's figures in Actual and in the API.
type StreamStatus struct {
	Name                      string         `json:"name"`
	Topics                    []string       `json:"topics"`
	FirstOffset               uint64         `json:"first_offset"`    // oldest offset readable at all (local or spilled)
	FirstLocal                uint64         `json:"first_local"`     // oldest offset on the node's disk
	NextOffset                uint64         `json:"next_offset"`     // offset the next record gets
	SpilledThrough            uint64         `json:"spilled_through"` // every offset below this is in the object store (0: none)
	LocalBytes                int64          `json:"local_bytes"`
	SpilledBytes              int64          `json:"spilled_bytes"`
	BacklogBytes              int64          `json:"backlog_bytes"` // local bytes not yet in the object store (Spill only)
	OldestUnspilledAgeSeconds float64        `json:"oldest_unspilled_age_seconds"`
	Records                   uint64         `json:"records"`        // appended since the agent started
	IngestPerSec              float64        `json:"ingest_per_sec"` // over the last telemetry interval
	Dropped                   uint64         `json:"dropped"`        // records deleted unspilled by drop-oldest or retention
	Rejected                  uint64         `json:"rejected"`       // records refused by reject-new or for size
	LastUploadError           string         `json:"last_upload_error,omitempty"`
	Cursors                   []CursorStatus `json:"cursors,omitempty"`
}

// CursorStatus is a named reader's committed position in a stream.
type CursorStatus struct {
	Name      string `json:"name"`
	Committed uint64 `json:"committed"` // every offset below this is done
	Lag       uint64 `json:"lag"`       // NextOffset - Committed
}

// StreamRecord is one record as the API returns it.
type StreamRecord struct {
	Offset  uint64            `json:"offset"`
	Time    time.Time         `json:"time"`
	Topic   string            `json:"topic"`
	Headers map[string]string `json:"headers,omitempty"`
	Payload []byte            `json:"payload"`
}

// Request is a console → node call on nodes/{node}/requests; the node
// answers with a Reply of the same ID on nodes/{node}/replies.
type Request struct {
	ID     string    `json:"id"`
	Method string    `json:"method"` // MethodStreamRecords, MethodStreamOffsetAt
	Stream string    `json:"stream,omitempty"`
	From   uint64    `json:"from,omitempty"`
	Limit  int       `json:"limit,omitempty"`
	Time   time.Time `json:"time,omitempty"`
}

// Request methods.
const (
	MethodStreamRecords  = "stream.records"   // records from From, at most Limit
	MethodStreamOffsetAt = "stream.offset_at" // first local offset at or after Time
)

// MaxReplyBytes bounds one reply; the node returns fewer records (and Next
// says where to continue) rather than exceed it.
const MaxReplyBytes = 192 << 10

// Reply answers a Request.
type Reply struct {
	ID      string         `json:"id"`
	Error   string         `json:"error,omitempty"`
	Code    int            `json:"code,omitempty"` // HTTP-like status for the error (404 no stream, 410 not local, 400 bad request)
	Records []StreamRecord `json:"records,omitempty"`
	Next    uint64         `json:"next,omitempty"`
	Offset  uint64         `json:"offset,omitempty"`
}
