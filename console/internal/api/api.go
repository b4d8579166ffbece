// Package api is the console's HTTP API: echo handlers that decode a
// request, authorize it, call a service and encode the answer. Errors map to
// status codes in one place (httpError).
package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cloudskin/cloudskin/console/internal/auth"
	"github.com/cloudskin/cloudskin/console/internal/cells"
	"github.com/cloudskin/cloudskin/console/internal/fleet"
	"github.com/cloudskin/cloudskin/console/internal/learning"
	"github.com/cloudskin/cloudskin/console/internal/metrics"
	"github.com/cloudskin/cloudskin/console/internal/modules"
	"github.com/cloudskin/cloudskin/console/internal/objects"
	"github.com/cloudskin/cloudskin/console/internal/ota"
	"github.com/cloudskin/cloudskin/console/internal/placement"
	"github.com/cloudskin/cloudskin/console/internal/rpc"
	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/console/internal/tier"
)

// fleetRoles may read the fleet (nodes, cells, streams, placement); the
// dataspace's providers and consumers may not.
var fleetRoles = []string{store.RoleAdmin, store.RoleOperator}

// MaxBodyBytes bounds every request body.
const MaxBodyBytes = 1 << 20

// Server holds what the handlers need.
type Server struct {
	Store   *store.Store
	Fleet   *fleet.Service
	Modules *modules.Service
	Cells   *cells.Service
	Tier    *tier.Service // streams' cloud tier (segments); nil answers 503
	// Placement runs apps, migrations and checkpoints.
	Placement *placement.Service
	// Objects keeps blobs such as datasets' provider documents.
	Objects objects.Store
	// Learning is the learning plane (models, predictions); nil answers 503.
	Learning *learning.Service
	// OTA keeps release bundles and runs rollouts; nil answers 503.
	OTA *ota.Service
	// EnergyHorizon is the Planner's: recommendations flag green nodes
	// whose energy will not last it.
	EnergyHorizon time.Duration
	// RPC asks nodes for what only they hold (stream records).
	RPC     *rpc.Caller
	Tokens  *auth.Tokens
	Metrics *metrics.Metrics
	Log     *slog.Logger
	// Ready reports whether the console can serve (database and broker up).
	Ready func(ctx context.Context) error
}

// Handler builds the echo router.
func (s *Server) Handler() *echo.Echo {
	e := echo.New()
	e.HideBanner = true
	e.HidePort = true
	e.HTTPErrorHandler = s.errorHandler
	e.Use(middleware.Recover())
	e.Use(s.observe)
	e.Use(middleware.BodyLimitWithConfig(middleware.BodyLimitConfig{
		Limit: strconv.Itoa(MaxBodyBytes/1024) + "K", Skipper: skipGlobalBodyLimit,
	}))

	e.GET("/healthz", func(c echo.Context) error { return c.JSON(http.StatusOK, map[string]string{"status": "ok"}) })
	e.GET("/readyz", s.readyz)
	e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(s.Metrics.Registry, promhttp.HandlerOpts{})))

	v1 := e.Group("/api/v1")
	v1.POST("/auth/login", s.login)
	v1.POST("/enroll", s.enroll)
	v1.GET("/agent/whoami", s.whoami, s.nodeAuth)

	// Authentication is attached per route, not to a group: echo gives a
	// group with middleware catch-all routes, which would answer unknown
	// paths with 401 instead of 404.
	v1.POST("/tokens", s.createToken, s.userAuth, s.requireRole(store.RoleAdmin))
	v1.GET("/nodes", s.listNodes, s.userAuth, s.requireRole(fleetRoles...))
	v1.GET("/nodes/:name", s.getNode, s.userAuth, s.requireRole(fleetRoles...))
	v1.GET("/nodes/:name/telemetry", s.nodeTelemetry, s.userAuth, s.requireRole(fleetRoles...))
	v1.POST("/modules", s.uploadModule, s.userAuth, s.requireRole(moduleRoles...))
	v1.GET("/modules", s.listModules, s.userAuth, s.requireRole(moduleRoles...))
	v1.GET("/modules/:digest", s.getModule, s.userAuth, s.requireRole(moduleRoles...))
	v1.GET("/modules/:digest/wasm", s.moduleWasm, s.userOrNodeAuth(moduleRoles...))
	v1.POST("/cells", s.createCell, s.userAuth, s.requireRole(cellWriteRoles...))
	v1.GET("/cells", s.listCells, s.userAuth, s.requireRole(fleetRoles...))
	v1.GET("/cells/:id", s.getCell, s.userAuth, s.requireRole(fleetRoles...))
	v1.GET("/cells/:id/events", s.cellEvents, s.userAuth, s.requireRole(fleetRoles...))
	v1.DELETE("/cells/:id", s.deleteCell, s.userAuth, s.requireRole(cellWriteRoles...))
	// Streams' cloud tier (segments)
	v1.POST("/nodes/:name/streams/:stream/segments", s.requestSegment, s.nodeAuth)
	v1.POST("/nodes/:name/streams/:stream/segments/:id/commit", s.commitSegment, s.nodeAuth)
	v1.GET("/nodes/:name/streams/:stream/segments", s.listSegments, s.userOrNodeAuth(segmentReadRoles...))
	v1.GET("/nodes/:name/streams/:stream/segments/:id/blob", s.segmentBlob, s.userOrNodeAuth(segmentReadRoles...))
	e.PUT(segmentBlobRoute, s.putSegmentBlob) // the signed URL is the credential
	s.registerStreams(v1)
	s.registerPlacement(v1)
	s.registerUsers(v1)
	s.registerDataspace(v1)
	s.registerNodeEvents(v1)
	s.registerLearning(v1)
	s.registerOTA(v1)
	return e
}

// apiError is the JSON body of every error.
type apiError struct {
	Error  string `json:"error"`
	Detail any    `json:"detail,omitempty"`
}

// httpError maps a service error to a status code and a message fit for
// the caller. Unexpected errors become a 500 without internals.
func httpError(err error) (int, string) {
	var he *echo.HTTPError
	switch {
	case errors.As(err, &he):
		return he.Code, fmt.Sprint(he.Message)
	case errors.Is(err, fleet.ErrInvalid):
		return http.StatusBadRequest, err.Error()
	case errors.Is(err, modules.ErrInvalid):
		return http.StatusBadRequest, err.Error()
	case errors.Is(err, cells.ErrInvalid):
		return http.StatusBadRequest, err.Error()
	case errors.Is(err, cells.ErrUnpublished):
		return http.StatusServiceUnavailable, err.Error()
	case errors.Is(err, modules.ErrTooLarge):
		return http.StatusRequestEntityTooLarge, err.Error()
	case errors.Is(err, store.ErrNotFound):
		return http.StatusNotFound, err.Error()
	case errors.Is(err, store.ErrConflict):
		return http.StatusConflict, err.Error()
	case errors.Is(err, store.ErrTokenUnknown), errors.Is(err, store.ErrTokenExpired), errors.Is(err, store.ErrTokenUsed):
		return http.StatusUnauthorized, err.Error()
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable, "request cancelled or timed out"
	default:
		return http.StatusInternalServerError, "internal error"
	}
}

func (s *Server) errorHandler(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	code, msg := httpError(err)
	if code >= 500 {
		s.Log.Error("request failed", "method", c.Request().Method, "path", c.Request().URL.Path, "err", err)
	} else if code != http.StatusNotFound {
		s.Log.Info("request refused", "method", c.Request().Method, "path", c.Request().URL.Path, "code", code, "err", msg)
	}
	if code == http.StatusBadRequest || code == http.StatusRequestEntityTooLarge || code == http.StatusUnsupportedMediaType {
		s.Metrics.Reject(metrics.RejectBadRequest)
	}
	if c.Request().Method == http.MethodHead {
		_ = c.NoContent(code)
		return
	}
	_ = c.JSON(code, apiError{Error: msg})
}

// observe counts and times requests by route.
func (s *Server) observe(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		err := next(c)
		if err != nil {
			c.Error(err)
		}
		route := c.Path()
		if route == "" {
			route = "unmatched"
		}
		s.Metrics.HTTPRequests.WithLabelValues(c.Request().Method, route, strconv.Itoa(c.Response().Status)).Inc()
		s.Metrics.HTTPDuration.WithLabelValues(c.Request().Method, route).Observe(time.Since(start).Seconds())
		return nil
	}
}

func (s *Server) readyz(c echo.Context) error {
	ctx, cancel := context.WithTimeout(c.Request().Context(), 3*time.Second)
	defer cancel()
	if err := s.Ready(ctx); err != nil {
		return c.JSON(http.StatusServiceUnavailable, apiError{Error: "not ready", Detail: err.Error()})
	}
	return c.JSON(http.StatusOK, map[string]string{"status": "ready"})
}

// bind decodes one JSON value strictly: known fields only, nothing after it.
func bind(c echo.Context, v any) error {
	if ct := c.Request().Header.Get(echo.HeaderContentType); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != echo.MIMEApplicationJSON {
			return echo.NewHTTPError(http.StatusUnsupportedMediaType, "send application/json")
		}
	}
	dec := jsonDecoder(c.Request().Body)
	err := dec.Decode(v)
	if err == nil {
		if _, extra := dec.Token(); extra != io.EOF {
			err = errors.New("data after the JSON value")
		}
	}
	if err != nil {
		var he *echo.HTTPError
		if errors.As(err, &he) { // the body limit's 413, surfacing from the reader
			return he
		}
		return echo.NewHTTPError(http.StatusBadRequest, "malformed JSON body: "+err.Error())
	}
	return nil
}
