package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cloudskin/cloudskin/edge-agent/internal/cells"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// A checkpoint file is what a node uploads for a cell and restores it from:
//
//	magic "CSKCKPT1" | u32 LE header length | header (JSON) | cell snapshot (cells.Snapshot.WriteTo)
//
// The header carries what the agent keeps around the cell: the stream
// cursors and topic offsets at the quiescent point and the undelivered
// inbox. The snapshot carries the cell itself (memory and globals, with its
// own checksum). Nothing in it depends on the CPU: a checkpoint taken on
// amd64 restores on arm64.
const (
	checkpointMagic     = "CSKCKPT1"
	checkpointsDir      = "checkpoints"
	maxCheckpointHeader = 64 << 20 // an inbox of 4096 records of up to 16 KiB, base64
)

type checkpointHeader struct {
	ID     string    `json:"id"`
	Cell   string    `json:"cell"`
	Module string    `json:"module"`
	Seq    uint64    `json:"seq"`
	Node   string    `json:"node"`
	Arch   string    `json:"arch"`
	Time   time.Time `json:"time"`
	Reason string    `json:"reason"` // periodic | hold
	// Cursors are the committed offsets of the stream inputs: of Node's
	// streams, or of CursorNodes[input]'s for an input reading another
	// node's stream.
	Cursors     map[string]uint64 `json:"cursors,omitempty"`
	CursorNodes map[string]string `json:"cursor_nodes,omitempty"`
	// TopicOffsets are the next offsets of the topic inputs.
	TopicOffsets map[string]uint64 `json:"topic_offsets,omitempty"`
	// Inbox holds topic records received but not yet handled, in order.
	Inbox []inboxRecord `json:"inbox,omitempty"`
	// TissueOut are the cell's tissue messages not yet acknowledged, by
	// receiver; TissueSeen the last message taken from each sender.
	TissueOut  map[string]*tissueOut `json:"tissue_out,omitempty"`
	TissueSeen map[string]uint64     `json:"tissue_seen,omitempty"`
}

type inboxRecord struct {
	Input   string `json:"input"`
	Offset  uint64 `json:"offset"`
	TimeNS  int64  `json:"time_ns"`
	Topic   string `json:"topic"`
	Payload []byte `json:"payload"`
}

// checkpoint is a decoded checkpoint file.
type checkpoint struct {
	checkpointHeader
	snap *cells.Snapshot
}

func (c *checkpoint) info(bytes int64) *protocol.CheckpointInfo {
	return &protocol.CheckpointInfo{ID: c.ID, Seq: c.Seq, Time: c.Time, Bytes: bytes, Reason: c.Reason}
}

// encodeCheckpoint writes a checkpoint file's bytes to w.
func encodeCheckpoint(w io.Writer, h *checkpointHeader, snap *cells.Snapshot) error {
	hb, err := json.Marshal(h)
	if err != nil {
		return err
	}
	var pre [12]byte
	copy(pre[:8], checkpointMagic)
	binary.LittleEndian.PutUint32(pre[8:], uint32(len(hb)))
	if _, err := w.Write(pre[:]); err != nil {
		return err
	}
	if _, err := w.Write(hb); err != nil {
		return err
	}
	_, err = snap.WriteTo(w)
	return err
}

// decodeCheckpoint reads a checkpoint file, refusing one whose cell memory
// would exceed maxMemory.
func decodeCheckpoint(r io.Reader, maxMemory int64) (*checkpoint, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	var pre [12]byte
	if _, err := io.ReadFull(br, pre[:]); err != nil {
		return nil, fmt.Errorf("checkpoint: header: %w", err)
	}
	if string(pre[:8]) != checkpointMagic {
		return nil, errors.New("checkpoint: not a CloudSkin checkpoint (bad magic)")
	}
	n := binary.LittleEndian.Uint32(pre[8:])
	if n > maxCheckpointHeader {
		return nil, fmt.Errorf("checkpoint: header of %d bytes is larger than %d", n, maxCheckpointHeader)
	}
	hb := make([]byte, n)
	if _, err := io.ReadFull(br, hb); err != nil {
		return nil, fmt.Errorf("checkpoint: header: %w", err)
	}
	c := &checkpoint{}
	if err := json.Unmarshal(hb, &c.checkpointHeader); err != nil {
		return nil, fmt.Errorf("checkpoint: header: %w", err)
	}
	snap, err := cells.ReadSnapshot(br, maxMemory)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", c.ID, err)
	}
	c.snap = snap
	return c, nil
}

// readCheckpointHeader reads only the header of a local checkpoint file.
func readCheckpointHeader(path string) (*checkpointHeader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var pre [12]byte
	if _, err := io.ReadFull(f, pre[:]); err != nil || string(pre[:8]) != checkpointMagic {
		return nil, fmt.Errorf("%s: not a checkpoint", path)
	}
	n := binary.LittleEndian.Uint32(pre[8:])
	if n > maxCheckpointHeader {
		return nil, fmt.Errorf("%s: header too large", path)
	}
	hb := make([]byte, n)
	if _, err := io.ReadFull(f, hb); err != nil {
		return nil, err
	}
	var h checkpointHeader
	if err := json.Unmarshal(hb, &h); err != nil {
		return nil, err
	}
	return &h, nil
}

func (m *cellManager) checkpointDir(cell string) string {
	return filepath.Join(m.dataDir, checkpointsDir, cell)
}

func (m *cellManager) checkpointPath(cell, id string) string {
	return filepath.Join(m.checkpointDir(cell), id+".ckpt")
}

// writeCheckpoint encodes a checkpoint to the cell's local directory
// (synced, renamed into place) and returns its path and size.
func (m *cellManager) writeCheckpoint(h *checkpointHeader, snap *cells.Snapshot) (string, int64, error) {
	dir := m.checkpointDir(h.Cell)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", 0, err
	}
	path := m.checkpointPath(h.Cell, h.ID)
	size, err := writeAtomic(path, 0o600, func(w io.Writer) error { return encodeCheckpoint(w, h, snap) })
	if err != nil {
		return "", 0, fmt.Errorf("write checkpoint %s: %w", h.ID, err)
	}
	return path, size, nil
}

// newestLocalCheckpoint returns the header and path of the cell's local
// checkpoint with the highest sequence number for module.
func (m *cellManager) newestLocalCheckpoint(cell, module string) (*checkpointHeader, string) {
	ents, err := os.ReadDir(m.checkpointDir(cell))
	if err != nil {
		return nil, ""
	}
	var best *checkpointHeader
	var bestPath string
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".ckpt") {
			continue
		}
		p := filepath.Join(m.checkpointDir(cell), e.Name())
		h, err := readCheckpointHeader(p)
		if err != nil || h.Cell != cell || h.Module != module {
			continue
		}
		if best == nil || h.Seq > best.Seq {
			best, bestPath = h, p
		}
	}
	return best, bestPath
}

// pruneLocalCheckpoints keeps the newest local checkpoint of a cell (the one
// an agent restart resumes from) and the one named keep.
func (m *cellManager) pruneLocalCheckpoints(cell string, newest uint64, keep string) {
	ents, _ := os.ReadDir(m.checkpointDir(cell))
	for _, e := range ents {
		p := filepath.Join(m.checkpointDir(cell), e.Name())
		if strings.HasSuffix(e.Name(), ".tmp") {
			os.Remove(p)
			continue
		}
		if e.Name() == keep+".ckpt" {
			continue
		}
		if h, err := readCheckpointHeader(p); err != nil || h.Seq < newest {
			os.Remove(p)
		}
	}
}

// uploadCheckpoint sends a local checkpoint file to the console.
func (m *cellManager) uploadCheckpoint(ctx context.Context, h *checkpointHeader, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	u := strings.TrimRight(m.a.cfg.Console, "/") + "/api/v1/cells/" + url.PathEscape(h.Cell) + "/checkpoints/" + url.PathEscape(h.ID)
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u, f)
	if err != nil {
		return err
	}
	req.ContentLength = fi.Size()
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("X-Checkpoint-Seq", strconv.FormatUint(h.Seq, 10))
	req.Header.Set("X-Checkpoint-Reason", h.Reason)
	req.SetBasicAuth(m.a.cred.Node, m.a.cred.Secret)
	resp, err := checkpointHTTP.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("upload checkpoint %s: %s: %s", h.ID, resp.Status, strings.TrimSpace(string(b)))
	}
	return nil
}

// downloadCheckpoint fetches a checkpoint from the console into the cell's
// local directory (unless it is there already) and returns its path.
func (m *cellManager) downloadCheckpoint(ctx context.Context, cell, id string) (string, error) {
	path := m.checkpointPath(cell, id)
	if _, err := readCheckpointHeader(path); err == nil {
		return path, nil
	}
	u := strings.TrimRight(m.a.cfg.Console, "/") + "/api/v1/cells/" + url.PathEscape(cell) + "/checkpoints/" + url.PathEscape(id)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	req.SetBasicAuth(m.a.cred.Node, m.a.cred.Secret)
	resp, err := checkpointHTTP.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return "", fmt.Errorf("download checkpoint %s: %s: %s", id, resp.Status, strings.TrimSpace(string(bytes.TrimSpace(b))))
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	if _, err := writeAtomic(path, 0o600, func(w io.Writer) error {
		_, err := io.Copy(w, resp.Body)
		return err
	}); err != nil {
		return "", fmt.Errorf("download checkpoint %s: %w", id, err)
	}
	return path, nil
}

// checkpointHTTP has no overall timeout: a large checkpoint on a slow
// uplink may take minutes; requests carry their own context.
var checkpointHTTP = &http.Client{}

func hostArch() string { return runtime.GOARCH }

// inboxOf converts queued topic records for a checkpoint.
func inboxOf(q []inputRecord) []inboxRecord {
	out := make([]inboxRecord, len(q))
	for i, r := range q {
		out[i] = inboxRecord{Input: r.input, Offset: r.rec.Offset, TimeNS: r.rec.TimeNS, Topic: r.rec.Topic, Payload: r.rec.Payload}
	}
	return out
}

// queueOf converts a checkpoint's inbox back, keeping only inputs the spec
// still has (and tissue messages, for a cell of an app).
func queueOf(in []inboxRecord, spec protocol.CellSpec) []inputRecord {
	out := make([]inputRecord, 0, len(in))
	for _, r := range in {
		tissue := r.Input == TissueInput && spec.App != ""
		if !tissue && !slices.ContainsFunc(spec.Inputs, func(i protocol.Input) bool { return i.Name == r.Input }) {
			continue
		}
		out = append(out, inputRecord{input: r.Input, rec: cells.Record{Offset: r.Offset, TimeNS: r.TimeNS, Topic: r.Topic, Payload: r.Payload}})
	}
	return out
}
