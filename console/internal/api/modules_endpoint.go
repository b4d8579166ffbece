package api

import (
	"encoding/base64"
	"encoding/hex"
	"io"
	"mime"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/cloudskin/cloudskin/console/internal/modules"
	"github.com/cloudskin/cloudskin/console/internal/store"
)

// MIMEWasm is the content type of a module, both ways.
const MIMEWasm = "application/wasm"

// uploadRoute is the one route whose body may exceed MaxBodyBytes.
const uploadRoute = "/api/v1/modules"

// uploadTimeout is how long a module upload may take to arrive; the HTTP
// server's ReadTimeout (a minute) suits JSON bodies, not 32 MiB on a slow link.
const uploadTimeout = 10 * time.Minute

// skipGlobalBodyLimit exempts the upload routes from the global body limit:
// the modules service reads at most modules.MaxSize itself, the OTA service
// at most ota.MaxBundleBytes, the tier at most a segment's declared size. Echo has matched the route before global
// middleware runs, so c.Path() is known.
func skipGlobalBodyLimit(c echo.Context) bool {
	return c.Request().Method == http.MethodPost && (c.Path() == uploadRoute || c.Path() == bundleUploadRoute) ||
		c.Request().Method == http.MethodPut && (c.Path() == segmentBlobRoute || c.Path() == checkpointRoute || c.Path() == documentRoute)
}

// uploadModule takes the raw module as application/wasm, with an optional
// ?name=.
func (s *Server) uploadModule(c echo.Context) error {
	mt, _, err := mime.ParseMediaType(c.Request().Header.Get(echo.HeaderContentType))
	if err != nil || mt != MIMEWasm {
		return echo.NewHTTPError(http.StatusUnsupportedMediaType, "send the module's bytes as "+MIMEWasm)
	}
	if c.Request().ContentLength > modules.MaxSize {
		return modules.ErrTooLarge // before reading any of it
	}
	// Best effort: without a deadline the server's own ReadTimeout applies.
	_ = http.NewResponseController(c.Response()).SetReadDeadline(time.Now().Add(uploadTimeout))
	m, created, err := s.Modules.Upload(c.Request().Context(), c.Request().Body, c.QueryParam("name"), subject(c))
	if err != nil {
		return err
	}
	if !created {
		return c.JSON(http.StatusOK, m)
	}
	c.Response().Header().Set(echo.HeaderLocation, "/api/v1/modules/"+m.Digest)
	return c.JSON(http.StatusCreated, m)
}

func (s *Server) listModules(c echo.Context) error {
	ms, err := s.Modules.List(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"modules": ms})
}

func (s *Server) getModule(c echo.Context) error {
	m, err := s.Modules.Get(c.Request().Context(), c.Param("digest"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, m)
}

// moduleWasm streams a module's bytes. The digest names the content, so the
// ETag is the digest and the answer never changes; Range and If-None-Match
// work when the object store can seek.
func (s *Server) moduleWasm(c echo.Context) error {
	m, rc, err := s.Modules.Open(c.Request().Context(), c.Param("digest"))
	if err != nil {
		return err
	}
	defer rc.Close()
	raw, _ := hex.DecodeString(m.Digest)
	h := c.Response().Header()
	h.Set(echo.HeaderContentType, MIMEWasm)
	h.Set("ETag", `"`+m.Digest+`"`)
	h.Set("Digest", "sha-256="+base64.StdEncoding.EncodeToString(raw))
	h.Set("Cache-Control", "private, max-age=31536000, immutable")
	if rs, ok := rc.(io.ReadSeeker); ok {
		http.ServeContent(c.Response(), c.Request(), "", m.UploadedAt, rs)
		return nil
	}
	h.Set(echo.HeaderContentLength, strconv.FormatInt(m.Size, 10))
	return c.Stream(http.StatusOK, MIMEWasm, rc)
}

// userOrNodeAuth lets a node (basic auth) or a user with one of roles
// (bearer JWT) through.
func (s *Server) userOrNodeAuth(roles ...string) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		asNode := s.nodeAuth(next)
		asUser := s.userAuth(s.requireRole(roles...)(next))
		return func(c echo.Context) error {
			if _, _, ok := c.Request().BasicAuth(); ok {
				return asNode(c)
			}
			return asUser(c)
		}
	}
}

var moduleRoles = []string{store.RoleAdmin, store.RoleOperator}
