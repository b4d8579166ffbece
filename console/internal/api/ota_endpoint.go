package api

import (
	"errors"
	"io"
	"mime"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/cloudskin/cloudskin/console/internal/ota"
	"github.com/cloudskin/cloudskin/console/internal/store"
	otabundle "github.com/cloudskin/cloudskin/shared/ota"
)

// bundleUploadRoute takes a whole OTA bundle (up to ota.MaxBundleBytes);
// like module uploads it is exempt from the global body limit.
const bundleUploadRoute = "/api/v1/bundles"

// bundleUploadTimeout is how long a bundle upload may take to arrive.
const bundleUploadTimeout = 30 * time.Minute

// otaWriteRoles upload bundles and start or cancel rollouts; fleetRoles read.
var otaWriteRoles = []string{store.RoleAdmin, store.RoleOperator}

// registerOTA adds bundles and rollouts (docs/api.md, "OTA: bundles and
// rollouts").
func (s *Server) registerOTA(v1 *echo.Group) {
	write := []echo.MiddlewareFunc{s.userAuth, s.requireRole(otaWriteRoles...)}
	read := []echo.MiddlewareFunc{s.userAuth, s.requireRole(fleetRoles...)}
	v1.POST("/bundles", s.uploadBundle, write...)
	v1.GET("/bundles", s.listBundles, read...)
	v1.GET("/bundles/:id", s.getBundle, read...)
	v1.DELETE("/bundles/:id", s.deleteBundle, write...)
	v1.GET("/bundles/:id/blob", s.bundleBlob, s.userOrNodeAuth(fleetRoles...))
	v1.POST("/rollouts", s.createRollout, write...)
	v1.GET("/rollouts", s.listRollouts, read...)
	v1.GET("/rollouts/:id", s.getRollout, read...)
	v1.POST("/rollouts/:id/cancel", s.cancelRollout, write...)
}

// otaError maps the OTA service's errors to status codes; store errors
// (404, 409) map in httpError.
func otaError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ota.ErrNoKey), errors.Is(err, ota.ErrFinished):
		return echo.NewHTTPError(http.StatusConflict, err.Error())
	case errors.Is(err, ota.ErrInvalid), errors.Is(err, otabundle.ErrRefused):
		return echo.NewHTTPError(http.StatusBadRequest, err.Error())
	case errors.Is(err, ota.ErrTooLarge):
		return echo.NewHTTPError(http.StatusRequestEntityTooLarge, err.Error())
	}
	return err
}

func (s *Server) otaService() (*ota.Service, error) {
	if s.OTA == nil {
		return nil, echo.NewHTTPError(http.StatusServiceUnavailable, "over-the-air updates are not available on this console")
	}
	return s.OTA, nil
}

// uploadBundle takes a bundle's raw bytes (application/octet-stream).
func (s *Server) uploadBundle(c echo.Context) error {
	svc, err := s.otaService()
	if err != nil {
		return err
	}
	mt, _, err := mime.ParseMediaType(c.Request().Header.Get(echo.HeaderContentType))
	if err != nil || (mt != echo.MIMEOctetStream && mt != "application/x-tar") {
		return echo.NewHTTPError(http.StatusUnsupportedMediaType, "send the bundle's bytes as "+echo.MIMEOctetStream)
	}
	if err := svc.KeyConfigured(); err != nil {
		return otaError(err)
	}
	if c.Request().ContentLength > ota.MaxBundleBytes {
		return otaError(ota.ErrTooLarge) // before reading any of it
	}
	_ = http.NewResponseController(c.Response()).SetReadDeadline(time.Now().Add(bundleUploadTimeout))
	b, created, err := svc.Upload(c.Request().Context(), c.Request().Body, subject(c))
	if err != nil {
		return otaError(err)
	}
	if !created {
		return c.JSON(http.StatusOK, b)
	}
	c.Response().Header().Set(echo.HeaderLocation, "/api/v1/bundles/"+b.ID)
	return c.JSON(http.StatusCreated, b)
}

func (s *Server) listBundles(c echo.Context) error {
	svc, err := s.otaService()
	if err != nil {
		return err
	}
	bs, err := svc.Bundles(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"bundles": bs})
}

func (s *Server) getBundle(c echo.Context) error {
	svc, err := s.otaService()
	if err != nil {
		return err
	}
	b, err := svc.Bundle(c.Request().Context(), c.Param("id"))
	if err != nil {
		return otaError(err)
	}
	return c.JSON(http.StatusOK, b)
}

func (s *Server) deleteBundle(c echo.Context) error {
	svc, err := s.otaService()
	if err != nil {
		return err
	}
	if err := svc.DeleteBundle(c.Request().Context(), c.Param("id"), subject(c)); err != nil {
		return otaError(err)
	}
	return c.NoContent(http.StatusNoContent)
}

// bundleBlob streams a bundle's bytes to a node or an operator. The id
// names the content, so the answer never changes: ETag is the id, and
// Range (resumed downloads) and If-None-Match work.
func (s *Server) bundleBlob(c echo.Context) error {
	svc, err := s.otaService()
	if err != nil {
		return err
	}
	b, rc, err := svc.OpenBundle(c.Request().Context(), c.Param("id"))
	if err != nil {
		return otaError(err)
	}
	defer rc.Close()
	h := c.Response().Header()
	h.Set(echo.HeaderContentType, echo.MIMEOctetStream)
	h.Set("ETag", `"`+b.ID+`"`)
	h.Set("Cache-Control", "private, max-age=31536000, immutable")
	if rs, ok := rc.(io.ReadSeeker); ok {
		http.ServeContent(c.Response(), c.Request(), "", b.UploadedAt, rs)
		return nil
	}
	h.Set(echo.HeaderContentLength, strconv.FormatInt(b.Size, 10))
	return c.Stream(http.StatusOK, echo.MIMEOctetStream, rc)
}

func (s *Server) createRollout(c echo.Context) error {
	svc, err := s.otaService()
	if err != nil {
		return err
	}
	var req ota.Request
	if err := bind(c, &req); err != nil {
		return err
	}
	r, err := svc.Create(c.Request().Context(), req, subject(c))
	var none *ota.NoTargetsError
	if errors.As(err, &none) {
		s.Log.Info("request refused", "method", c.Request().Method, "path", c.Request().URL.Path, "code", http.StatusUnprocessableEntity, "err", err)
		return c.JSON(http.StatusUnprocessableEntity, apiError{Error: err.Error(), Detail: map[string]any{"matched": none.Matched, "skipped": none.Skipped}})
	}
	if err != nil {
		return otaError(err)
	}
	c.Response().Header().Set(echo.HeaderLocation, "/api/v1/rollouts/"+r.ID)
	return c.JSON(http.StatusCreated, r)
}

// listRollouts: GET /rollouts?state=&limit=, newest first, each with its
// nodes' progress.
func (s *Server) listRollouts(c echo.Context) error {
	svc, err := s.otaService()
	if err != nil {
		return err
	}
	limit, err := queryInt(c, "limit", 100, 1, 1000)
	if err != nil {
		return err
	}
	rs, err := svc.Rollouts(c.Request().Context(), c.QueryParam("state"), limit)
	if err != nil {
		return otaError(err)
	}
	return c.JSON(http.StatusOK, map[string]any{"rollouts": rs})
}

func (s *Server) getRollout(c echo.Context) error {
	svc, err := s.otaService()
	if err != nil {
		return err
	}
	r, err := svc.Rollout(c.Request().Context(), c.Param("id"))
	if err != nil {
		return otaError(err)
	}
	return c.JSON(http.StatusOK, r)
}

func (s *Server) cancelRollout(c echo.Context) error {
	svc, err := s.otaService()
	if err != nil {
		return err
	}
	r, err := svc.Cancel(c.Request().Context(), c.Param("id"), subject(c))
	if err != nil {
		return otaError(err)
	}
	return c.JSON(http.StatusOK, r)
}
