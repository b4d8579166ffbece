package ota

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	bundle "github.com/cloudskin/cloudskin/shared/ota"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// errPermanent marks a download the console will not serve (the update
// fails for good; a new spec is needed).
var errPermanent = errors.New("download failed for good")

// partPath is where the bundle of spec is downloaded to; it survives
// restarts so the download resumes.
func (u *Updater) partPath(spec *protocol.UpdateSpec) string {
	return filepath.Join(u.cfg.Dir, downloadDir, spec.Bundle+".part")
}

// download fetches the bundle into its .part file, resuming from what is
// there with an HTTP Range request, retrying transient failures with
// backoff until ctx ends, and checks its size and sha256. A mismatch after
// a resumed download is retried once from scratch (a torn .part after a
// power loss); a mismatch of a whole fresh download refuses the bundle.
func (u *Updater) download(ctx context.Context, spec *protocol.UpdateSpec) (string, error) {
	path := u.partPath(spec)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	u.dropOtherDownloads(spec.Bundle)
	// Bytes a previous process left may be torn by a power loss; what this
	// process wrote itself is trusted to resume on.
	fi, err := os.Stat(path)
	fromDisk := err == nil && fi.Size() > 0
	backoff := time.Second
	for {
		n, err := u.fetch(ctx, spec, path)
		if err == nil && n == spec.Size {
			sum, herr := fileSHA256(path)
			if herr != nil {
				return "", herr
			}
			if sum == spec.SHA256 {
				return path, nil
			}
			os.Remove(path)
			if !fromDisk {
				return "", fmt.Errorf("%w: the downloaded bundle's sha256 is %s, the update says %s", bundle.ErrTampered, sum, spec.SHA256)
			}
			u.log.Warn("ota: resumed download does not match its sha256; downloading it again from the start", "bundle", short(spec.Bundle))
			fromDisk = false
			continue
		}
		if err == nil {
			err = fmt.Errorf("have %d of %d bytes", n, spec.Size)
		}
		if errors.Is(err, errCrashed) || errors.Is(err, errPermanent) || errors.Is(err, bundle.ErrRefused) || ctx.Err() != nil {
			return "", err
		}
		u.log.Warn("ota: download interrupted; will resume", "bundle", short(spec.Bundle), "have", n, "size", spec.Size, "err", err, "retry_in", backoff)
		u.setError(err.Error())
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, u.cfg.MaxBackoff)
	}
}

// fetch makes one request for what is missing from path and appends it;
// it returns the file's size afterwards.
func (u *Updater) fetch(ctx context.Context, spec *protocol.UpdateSpec, path string) (int64, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	have := fi.Size()
	if have > spec.Size {
		if err := f.Truncate(0); err != nil {
			return 0, err
		}
		have = 0
	}
	u.setProgress(have, spec.Size)
	if have == spec.Size {
		return have, nil
	}
	// A stalled connection is cut so the download resumes on a new one.
	rctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stall := time.AfterFunc(u.cfg.StallTimeout, func() { cancel(fmt.Errorf("no data for %s", u.cfg.StallTimeout)) })
	defer stall.Stop()
	h := http.Header{}
	if have > 0 {
		h.Set("Range", "bytes="+strconv.FormatInt(have, 10)+"-")
	}
	resp, err := u.cfg.Get(rctx, spec.URL, h)
	if err != nil {
		return have, err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusPartialContent && have > 0:
		start, err := contentRangeStart(resp.Header.Get("Content-Range"))
		if err != nil || start != have {
			// Not the range asked for: start over.
			f.Truncate(0)
			return 0, fmt.Errorf("console answered range %q to bytes=%d-", resp.Header.Get("Content-Range"), have)
		}
	case resp.StatusCode == http.StatusOK:
		if have > 0 {
			u.log.Info("ota: console ignored the range request; downloading from the start", "bundle", short(spec.Bundle))
		}
		if err := f.Truncate(0); err != nil {
			return 0, err
		}
		have = 0
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable:
		f.Truncate(0)
		return 0, fmt.Errorf("console answered %s to bytes=%d-", resp.Status, have)
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusGone ||
		resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return have, fmt.Errorf("%w: console answered %s: %s", errPermanent, resp.Status, strings.TrimSpace(string(msg)))
	default:
		return have, fmt.Errorf("console answered %s", resp.Status)
	}
	if _, err := f.Seek(have, io.SeekStart); err != nil {
		return have, err
	}
	buf := make([]byte, 256<<10)
	var sinceSync int64
	for have < spec.Size {
		k, rerr := resp.Body.Read(buf[:min(int64(len(buf)), spec.Size-have)])
		if k > 0 {
			stall.Reset(u.cfg.StallTimeout)
			if _, err := f.Write(buf[:k]); err != nil {
				return have, err
			}
			have += int64(k)
			sinceSync += int64(k)
			u.m.downloaded.Add(float64(k))
			u.setProgress(have, spec.Size)
			if sinceSync >= 8<<20 {
				// Keep the resume point durable across a power loss.
				f.Sync()
				sinceSync = 0
			}
			if u.crash("downloading") {
				return have, errCrashed
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			if c := context.Cause(rctx); c != nil && ctx.Err() == nil {
				rerr = c
			}
			f.Sync()
			return have, rerr
		}
	}
	return have, f.Sync()
}

// contentRangeStart reads the first byte of "bytes start-end/total".
func contentRangeStart(v string) (int64, error) {
	r, ok := strings.CutPrefix(v, "bytes ")
	if !ok {
		return 0, fmt.Errorf("content-range %q", v)
	}
	start, _, ok := strings.Cut(r, "-")
	if !ok {
		return 0, fmt.Errorf("content-range %q", v)
	}
	return strconv.ParseInt(start, 10, 64)
}

// dropOtherDownloads removes .part files of other bundles: one update at
// a time, and a superseded bundle is not resumed.
func (u *Updater) dropOtherDownloads(keep string) {
	entries, _ := os.ReadDir(filepath.Join(u.cfg.Dir, downloadDir))
	for _, e := range entries {
		if e.Name() != keep+".part" {
			os.RemoveAll(filepath.Join(u.cfg.Dir, downloadDir, e.Name()))
		}
	}
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
