package ui

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// apiError is an answer of the API with a status of 400 or more, in the
// API's words.
type apiError struct {
	Code int
	Msg  string
	// Detail is the answer's "detail", when it has one (a rollout that
	// would update no node lists the skipped nodes there).
	Detail json.RawMessage
}

func (e *apiError) Error() string { return e.Msg }

func statusOf(err error) int {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.Code
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return http.StatusRequestEntityTooLarge
	}
	return http.StatusInternalServerError
}

func errorText(err error) string {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.Msg
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return fmt.Sprintf("request body over %d bytes", mbe.Limit)
	}
	return err.Error()
}

// raw is a request body that is not JSON: a module's bytes, or a stream
// of size bytes (an OTA bundle, too large to hold in memory).
type raw struct {
	body        []byte
	stream      io.Reader
	size        int64
	contentType string
}

// recorder is the in-process response of one API call.
type recorder struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.body.Write(b)
}
func (r *recorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
}

// call sends one request to the API in process with the user's token and
// decodes a JSON answer into out (if not nil). An answer of 400 or more is
// an *apiError with the API's message.
func (u *UI) call(ctx context.Context, token, method, path string, body any, out any) error {
	var rd io.Reader
	ct := ""
	switch b := body.(type) {
	case nil:
	case raw:
		rd, ct = bytes.NewReader(b.body), b.contentType
		if b.stream != nil {
			rd = b.stream
		}
	default:
		buf, err := json.Marshal(b)
		if err != nil {
			return err
		}
		rd, ct = bytes.NewReader(buf), "application/json"
	}
	req, err := http.NewRequestWithContext(ctx, method, path, rd)
	if err != nil {
		return err
	}
	req.RemoteAddr = "ui" // the API logs it as the caller's address
	if b, ok := body.(raw); ok && b.stream != nil {
		req.ContentLength = b.size // the API refuses an oversized body before reading it
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := &recorder{header: http.Header{}}
	u.cfg.API.ServeHTTP(rec, req)
	if rec.code == 0 {
		rec.code = http.StatusOK
	}
	if rec.code >= 400 {
		var e struct {
			Error  string          `json:"error"`
			Detail json.RawMessage `json:"detail"`
		}
		ae := &apiError{Code: rec.code, Msg: http.StatusText(rec.code)}
		if json.Unmarshal(rec.body.Bytes(), &e) == nil && e.Error != "" {
			ae.Msg, ae.Detail = e.Error, e.Detail
		}
		return ae
	}
	if out != nil && rec.body.Len() > 0 {
		if err := json.Unmarshal(rec.body.Bytes(), out); err != nil {
			return fmt.Errorf("decode %s %s: %w", method, strings.SplitN(path, "?", 2)[0], err)
		}
	}
	return nil
}
