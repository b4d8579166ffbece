package api

import (
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/cloudskin/cloudskin/console/internal/auth"
	"github.com/cloudskin/cloudskin/console/internal/metrics"
	"github.com/cloudskin/cloudskin/console/internal/store"
)

const claimsKey = "claims"

type loginRequest struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

type loginResponse struct {
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
	Role      string    `json:"role"`
}

func (s *Server) login(c echo.Context) error {
	var req loginRequest
	if err := bind(c, &req); err != nil {
		return err
	}
	if req.Username == "" || req.Password == "" || len(req.Username) > 64 || len(req.Password) > 72 {
		s.Metrics.Reject(metrics.RejectLogin)
		return echo.NewHTTPError(http.StatusUnauthorized, "wrong username or password")
	}
	u, err := s.Store.UserByName(c.Request().Context(), req.Username)
	if err != nil {
		auth.BurnPasswordCheck(req.Password)
	}
	if err != nil || !auth.CheckPassword(u.PasswordHash, req.Password) {
		s.Metrics.Reject(metrics.RejectLogin)
		s.Log.Warn("login failed", "username", req.Username, "remote", c.RealIP())
		return echo.NewHTTPError(http.StatusUnauthorized, "wrong username or password")
	}
	if u.Status != "" && u.Status != store.UserActive {
		// The password was right: say why, without issuing a token.
		s.Log.Info("login of an account not active", "username", u.Username, "status", u.Status)
		return echo.NewHTTPError(http.StatusForbidden, "account "+u.Status+": an admin must approve it")
	}
	tok, exp, err := s.Tokens.Issue(u.Username, u.Role)
	if err != nil {
		return err
	}
	s.Log.Info("login", "username", u.Username, "remote", c.RealIP())
	return c.JSON(http.StatusOK, loginResponse{Token: tok, ExpiresAt: exp.UTC(), Role: u.Role})
}

// userAuth requires a valid console JWT.
func (s *Server) userAuth(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		h := c.Request().Header.Get(echo.HeaderAuthorization)
		tok, ok := strings.CutPrefix(h, "Bearer ")
		if !ok || tok == "" {
			s.Metrics.Reject(metrics.RejectJWT)
			return echo.NewHTTPError(http.StatusUnauthorized, "missing bearer token: log in at POST /api/v1/auth/login")
		}
		claims, err := s.Tokens.Verify(tok)
		if err != nil {
			s.Metrics.Reject(metrics.RejectJWT)
			s.Log.Warn("token refused", "remote", c.RealIP(), "err", err)
			return echo.NewHTTPError(http.StatusUnauthorized, "invalid or expired token")
		}
		// The account as it is now, not as it was at login: a disabled
		// user or a changed role takes effect at once.
		u, err := s.Store.UserByName(c.Request().Context(), claims.Subject)
		if err != nil || (u.Status != "" && u.Status != store.UserActive) || u.Role != claims.Role {
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
			s.Metrics.Reject(metrics.RejectJWT)
			return echo.NewHTTPError(http.StatusUnauthorized, "the account behind this token is gone, disabled or changed: log in again")
		}
		c.Set(claimsKey, claims)
		return next(c)
	}
}

// requireRole allows only the given roles; it runs after userAuth.
func (s *Server) requireRole(roles ...string) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			claims, _ := c.Get(claimsKey).(*auth.Claims)
			for _, r := range roles {
				if claims != nil && claims.Role == r {
					return next(c)
				}
			}
			s.Metrics.Reject(metrics.RejectForbidden)
			role := ""
			if claims != nil {
				role = claims.Role
			}
			s.Log.Warn("request forbidden", "user", subject(c), "role", role, "path", c.Request().URL.Path, "needs", roles)
			return echo.NewHTTPError(http.StatusForbidden, "this needs role "+strings.Join(roles, " or "))
		}
	}
}

func subject(c echo.Context) string {
	if claims, ok := c.Get(claimsKey).(*auth.Claims); ok {
		return claims.Subject
	}
	return ""
}
