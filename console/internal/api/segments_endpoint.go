package api

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/cloudskin/cloudskin/console/internal/metrics"
	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/console/internal/tier"
)

// segmentBlobRoute is the console's own segment upload (no S3); like the
// module upload it is exempt from the global body limit, and the tier reads
// at most the declared size.
const segmentBlobRoute = tier.BlobRoute + ":id"

// segmentUploadTimeout is how long a segment (up to 1 GiB) may take to
// arrive on a slow uplink.
const segmentUploadTimeout = 30 * time.Minute

// segmentReadRoles may read any node's spilled segments.
var segmentReadRoles = []string{store.RoleAdmin, store.RoleOperator}

// tierError maps a tier error to a status code; a conflict carries the
// existing segment as its detail.
func (s *Server) tierError(c echo.Context, err error) error {
	var ce *tier.ConflictError
	switch {
	case errors.As(err, &ce):
		s.Log.Info("request refused", "method", c.Request().Method, "path", c.Request().URL.Path, "code", http.StatusConflict, "err", ce.Error())
		return c.JSON(http.StatusConflict, apiError{Error: ce.Error(), Detail: ce.Existing})
	case errors.Is(err, tier.ErrInvalid), errors.Is(err, tier.ErrMismatch):
		return echo.NewHTTPError(http.StatusBadRequest, err.Error())
	case errors.Is(err, tier.ErrTooLarge):
		return echo.NewHTTPError(http.StatusRequestEntityTooLarge, err.Error())
	case errors.Is(err, tier.ErrForbidden):
		return echo.NewHTTPError(http.StatusForbidden, err.Error())
	case errors.Is(err, tier.ErrMissing), errors.Is(err, tier.ErrConflict):
		return echo.NewHTTPError(http.StatusConflict, err.Error())
	case errors.Is(err, tier.ErrNotFound):
		return echo.NewHTTPError(http.StatusNotFound, err.Error())
	case errors.Is(err, tier.ErrUnavail):
		return echo.NewHTTPError(http.StatusServiceUnavailable, "object store unavailable: retry later").SetInternal(err)
	default:
		return err // httpError: 500 without internals
	}
}

// tierReady answers 503 while the console runs without a cloud tier.
func (s *Server) tierReady() error {
	if s.Tier == nil {
		return echo.NewHTTPError(http.StatusServiceUnavailable, "the cloud tier is not configured on this console")
	}
	return nil
}

// ownNode refuses a node acting on another node's streams. Users (JWT)
// passed their role check already.
func (s *Server) ownNode(c echo.Context) error {
	if node, ok := c.Get("node").(string); ok && node != c.Param("name") {
		s.Metrics.Reject(metrics.RejectForbidden)
		s.Log.Warn("node refused another node's streams", "node", node, "path", c.Request().URL.Path)
		return echo.NewHTTPError(http.StatusForbidden, "a node may only use its own streams")
	}
	return nil
}

// requestSegment: POST /nodes/{name}/streams/{stream}/segments (node).
func (s *Server) requestSegment(c echo.Context) error {
	if err := s.tierReady(); err != nil {
		return err
	}
	if err := s.ownNode(c); err != nil {
		return err
	}
	var req tier.UploadRequest
	if err := bind(c, &req); err != nil {
		return err
	}
	t, err := s.Tier.Request(c.Request().Context(), c.Param("name"), c.Param("stream"), req)
	if err != nil {
		return s.tierError(c, err)
	}
	return c.JSON(http.StatusOK, t)
}

// commitSegment: POST /nodes/{name}/streams/{stream}/segments/{id}/commit (node).
func (s *Server) commitSegment(c echo.Context) error {
	if err := s.tierReady(); err != nil {
		return err
	}
	if err := s.ownNode(c); err != nil {
		return err
	}
	seg, err := s.Tier.Commit(c.Request().Context(), c.Param("name"), c.Param("stream"), c.Param("id"))
	if err != nil {
		return s.tierError(c, err)
	}
	return c.JSON(http.StatusOK, tier.Ticket{ID: seg.ID, Committed: seg.Committed})
}

// listSegments: GET /nodes/{name}/streams/{stream}/segments?from=&limit=
// (the node itself, or an admin or operator).
func (s *Server) listSegments(c echo.Context) error {
	if err := s.tierReady(); err != nil {
		return err
	}
	if err := s.ownNode(c); err != nil {
		return err
	}
	var from uint64
	var limit int
	var err error
	if v := c.QueryParam("from"); v != "" {
		if from, err = strconv.ParseUint(v, 10, 64); err != nil {
			return echo.NewHTTPError(http.StatusBadRequest, "from: want an offset (a non-negative integer)")
		}
	}
	if v := c.QueryParam("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 {
			return echo.NewHTTPError(http.StatusBadRequest, "limit: want a positive integer")
		}
	}
	segs, err := s.Tier.List(c.Request().Context(), c.Param("name"), c.Param("stream"), from, limit)
	if err != nil {
		return s.tierError(c, err)
	}
	return c.JSON(http.StatusOK, map[string]any{"node": c.Param("name"), "stream": c.Param("stream"), "segments": segs})
}

// segmentBlob: GET /nodes/{name}/streams/{stream}/segments/{id}/blob (the
// node itself, or an admin or operator). The console reads the object with
// its own credentials, so S3 keys never leave it.
func (s *Server) segmentBlob(c echo.Context) error {
	if err := s.tierReady(); err != nil {
		return err
	}
	if err := s.ownNode(c); err != nil {
		return err
	}
	seg, rc, err := s.Tier.OpenBlob(c.Request().Context(), c.Param("name"), c.Param("stream"), c.Param("id"))
	if err != nil {
		return s.tierError(c, err)
	}
	defer rc.Close()
	raw, _ := hex.DecodeString(seg.SHA256)
	h := c.Response().Header()
	h.Set(echo.HeaderContentType, echo.MIMEOctetStream)
	h.Set("ETag", `"`+seg.SHA256+`"`)
	h.Set("Digest", "sha-256="+base64.StdEncoding.EncodeToString(raw))
	h.Set("Cache-Control", "private, max-age=31536000, immutable")
	if rs, ok := rc.(io.ReadSeeker); ok {
		http.ServeContent(c.Response(), c.Request(), "", seg.CreatedAt, rs)
		return nil
	}
	h.Set(echo.HeaderContentLength, strconv.FormatInt(seg.Bytes, 10))
	return c.Stream(http.StatusOK, echo.MIMEOctetStream, rc)
}

// putSegmentBlob: PUT /blobs/segments/{id}?exp=&sig= — the upload URL the
// tier hands out without S3. The signature is the credential.
func (s *Server) putSegmentBlob(c echo.Context) error {
	if err := s.tierReady(); err != nil {
		return err
	}
	// Best effort: without a deadline the server's own ReadTimeout applies.
	_ = http.NewResponseController(c.Response()).SetReadDeadline(time.Now().Add(segmentUploadTimeout))
	r := c.Request()
	seg, err := s.Tier.PutBlob(r.Context(), tier.BlobUpload{
		ID: c.Param("id"), Exp: c.QueryParam("exp"), Sig: c.QueryParam("sig"),
		ContentMD5: r.Header.Get("Content-MD5"), ContentLength: r.ContentLength, Body: r.Body,
	})
	if err != nil {
		return s.tierError(c, err)
	}
	c.Response().Header().Set("ETag", `"`+seg.MD5+`"`)
	return c.JSON(http.StatusOK, map[string]any{"id": seg.ID, "bytes": seg.Bytes, "sha256": seg.SHA256})
}
