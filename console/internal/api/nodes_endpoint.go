package api

import (
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/cloudskin/cloudskin/console/internal/fleet"
	"github.com/cloudskin/cloudskin/console/internal/metrics"
)

type tokenRequest struct {
	TTL         string `json:"ttl"`
	Description string `json:"description"`
}

type tokenResponse struct {
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
}

func (s *Server) createToken(c echo.Context) error {
	req := tokenRequest{TTL: "24h"}
	if c.Request().ContentLength != 0 {
		if err := bind(c, &req); err != nil {
			return err
		}
	}
	ttl, err := time.ParseDuration(req.TTL)
	if err != nil {
		return echo.NewHTTPError(http.StatusBadRequest, "ttl: "+err.Error())
	}
	tok, exp, err := s.Fleet.CreateToken(c.Request().Context(), ttl, req.Description, subject(c))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, tokenResponse{Token: tok, ExpiresAt: exp})
}

func (s *Server) enroll(c echo.Context) error {
	var req fleet.EnrollRequest
	if err := bind(c, &req); err != nil {
		return err
	}
	resp, err := s.Fleet.Enroll(c.Request().Context(), req)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, resp)
}

// nodeAuth accepts a node's credential as HTTP basic auth (name:secret).
func (s *Server) nodeAuth(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		name, secret, ok := c.Request().BasicAuth()
		if !ok || !s.Fleet.AuthenticateNode(c.Request().Context(), name, secret) {
			s.Metrics.Reject(metrics.RejectNodeCredential)
			s.Log.Warn("node credential refused", "node", name, "remote", c.RealIP())
			return echo.NewHTTPError(http.StatusUnauthorized, "invalid node credential")
		}
		c.Set("node", name)
		return next(c)
	}
}

func (s *Server) whoami(c echo.Context) error {
	n, err := s.Fleet.Node(c.Request().Context(), c.Get("node").(string))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, n)
}

func (s *Server) listNodes(c echo.Context) error {
	ns, err := s.Fleet.Nodes(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"nodes": ns})
}

func (s *Server) getNode(c echo.Context) error {
	n, err := s.Fleet.Node(c.Request().Context(), c.Param("name"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, n)
}

// nodeTelemetry serves ?since=&until=&limit=; since and until take an
// RFC 3339 time or a duration back from now ("15m").
func (s *Server) nodeTelemetry(c echo.Context) error {
	now := time.Now()
	since, err := parseTime(c.QueryParam("since"), now.Add(-time.Hour), now)
	if err != nil {
		return echo.NewHTTPError(http.StatusBadRequest, "since: "+err.Error())
	}
	until, err := parseTime(c.QueryParam("until"), now.Add(time.Hour), now)
	if err != nil {
		return echo.NewHTTPError(http.StatusBadRequest, "until: "+err.Error())
	}
	limit := 1000
	if l := c.QueryParam("limit"); l != "" {
		if limit, err = strconv.Atoi(l); err != nil {
			return echo.NewHTTPError(http.StatusBadRequest, "limit: not a number")
		}
	}
	samples, err := s.Fleet.Telemetry(c.Request().Context(), c.Param("name"), since, until, limit)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"node": c.Param("name"), "since": since.UTC(), "until": until.UTC(), "samples": samples})
}

func parseTime(v string, def, now time.Time) (time.Time, error) {
	if v == "" {
		return def, nil
	}
	if d, err := time.ParseDuration(v); err == nil {
		if d < 0 {
			d = -d
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, echo.NewHTTPError(http.StatusBadRequest, "want an RFC 3339 time or a duration such as 15m")
	}
	return t, nil
}
