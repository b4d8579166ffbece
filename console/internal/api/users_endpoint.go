package api

import (
	"context"
	"errors"
	"net/http"
	"regexp"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/cloudskin/cloudskin/console/internal/auth"
	"github.com/cloudskin/cloudskin/console/internal/metrics"
	"github.com/cloudskin/cloudskin/console/internal/store"
)

// Dataspace users register themselves as providers or consumers with a
// profile; an admin approves them before they can log in. An admin can
// also hand a user a one-time, expiring password reset token.

const resetTTL = time.Hour

var (
	usernameRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{2,63}$`)
	nationalityRE = regexp.MustCompile(`^[A-Z]{2}$`)
	sectorRE      = regexp.MustCompile(`^[a-z][a-z0-9-]{1,63}$`)
	orgTypes      = map[string]bool{"private": true, "governmental": true, "military": true, "scientific": true, "educational": true}
)

func (s *Server) registerUsers(v1 *echo.Group) {
	v1.POST("/auth/register", s.register)
	v1.POST("/auth/reset", s.resetPassword)
	v1.GET("/users/me", s.me, s.userAuth)
	v1.GET("/users", s.listUsers, s.userAuth, s.requireRole(store.RoleAdmin))
	v1.POST("/users", s.createUser, s.userAuth, s.requireRole(store.RoleAdmin))
	v1.POST("/users/:name/approve", s.approveUser, s.userAuth, s.requireRole(store.RoleAdmin))
	v1.POST("/users/:name/disable", s.disableUser, s.userAuth, s.requireRole(store.RoleAdmin))
	v1.POST("/users/:name/password-reset", s.createPasswordReset, s.userAuth, s.requireRole(store.RoleAdmin))
}

// Profile is what the dataspace's policies read about a user.
type Profile struct {
	Nationality string `json:"nationality"` // ISO 3166-1 alpha-2, e.g. "ES"
	Sector      string `json:"sector"`      // e.g. "agriculture"
	OrgType     string `json:"org_type"`    // private | governmental | military | scientific | educational
	NonProfit   bool   `json:"non_profit"`
}

type registerRequest struct {
	Username string  `json:"username"`
	Password string  `json:"password"`
	Role     string  `json:"role"` // provider | consumer
	Profile  Profile `json:"profile"`
}

// UserView is a user as the API shows it (never the password hash).
type UserView struct {
	Username   string     `json:"username"`
	Role       string     `json:"role"`
	Status     string     `json:"status"`
	Profile    Profile    `json:"profile"`
	ApprovedBy string     `json:"approved_by,omitempty"`
	ApprovedAt *time.Time `json:"approved_at,omitempty"`
	CreatedAt  time.Time  `json:"created_at"`
}

func userView(u *store.User) UserView {
	return UserView{Username: u.Username, Role: u.Role, Status: u.Status, ApprovedBy: u.ApprovedBy, ApprovedAt: u.ApprovedAt,
		CreatedAt: u.CreatedAt.UTC(), Profile: Profile{Nationality: u.Nationality, Sector: u.Sector, OrgType: u.OrgType, NonProfit: u.NonProfit}}
}

// register: POST /auth/register, unauthenticated; the account waits for
// an admin's approval.
func (s *Server) register(c echo.Context) error {
	var req registerRequest
	if err := bind(c, &req); err != nil {
		return err
	}
	if req.Role != store.RoleProvider && req.Role != store.RoleConsumer {
		return echo.NewHTTPError(http.StatusBadRequest, "role: register as provider or consumer (fleet roles are given by an admin)")
	}
	u, err := s.newUser(req, store.UserPending, "")
	if err != nil {
		return err
	}
	s.Log.Info("user registered; awaiting approval", "username", u.Username, "role", u.Role, "remote", c.RealIP())
	return c.JSON(http.StatusCreated, userView(u))
}

// createUser: POST /users (admin) creates an active user of any role,
// e.g. an operator; a provider or consumer needs a full profile.
func (s *Server) createUser(c echo.Context) error {
	var req registerRequest
	if err := bind(c, &req); err != nil {
		return err
	}
	switch req.Role {
	case store.RoleAdmin, store.RoleOperator, store.RoleProvider, store.RoleConsumer:
	default:
		return echo.NewHTTPError(http.StatusBadRequest, "role: admin, operator, provider or consumer")
	}
	u, err := s.newUser(req, store.UserActive, subject(c))
	if err != nil {
		return err
	}
	s.Log.Info("user created", "username", u.Username, "role", u.Role, "by", subject(c))
	return c.JSON(http.StatusCreated, userView(u))
}

// newUser validates a registration and stores the user.
func (s *Server) newUser(req registerRequest, status, by string) (*store.User, error) {
	p := req.Profile
	dataspace := req.Role == store.RoleProvider || req.Role == store.RoleConsumer
	switch {
	case !usernameRE.MatchString(req.Username):
		return nil, echo.NewHTTPError(http.StatusBadRequest, "username: 3-64 lowercase letters, digits, '.', '_' or '-'")
	case len(req.Password) < 12 || len(req.Password) > 72:
		return nil, echo.NewHTTPError(http.StatusBadRequest, "password: 12 to 72 characters")
	case (dataspace || p.Nationality != "") && !nationalityRE.MatchString(p.Nationality):
		return nil, echo.NewHTTPError(http.StatusBadRequest, "profile.nationality: an ISO 3166-1 alpha-2 code such as ES")
	case (dataspace || p.Sector != "") && !sectorRE.MatchString(p.Sector):
		return nil, echo.NewHTTPError(http.StatusBadRequest, "profile.sector: 2-64 lowercase letters, digits or '-', e.g. agriculture")
	case (dataspace || p.OrgType != "") && !orgTypes[p.OrgType]:
		return nil, echo.NewHTTPError(http.StatusBadRequest, "profile.org_type: private, governmental, military, scientific or educational")
	}
	hash, err := auth.HashPassword(req.Password)
	if err != nil {
		return nil, echo.NewHTTPError(http.StatusBadRequest, err.Error())
	}
	u := &store.User{Username: req.Username, PasswordHash: hash, Role: req.Role, Status: status,
		Nationality: p.Nationality, Sector: p.Sector, OrgType: p.OrgType, NonProfit: p.NonProfit}
	if status == store.UserActive && by != "" {
		now := time.Now().UTC()
		u.ApprovedBy, u.ApprovedAt = by, &now
	}
	if err := s.Store.CreateUser(context.Background(), u); err != nil {
		return nil, err // 409 when the name is taken
	}
	return u, nil
}

func (s *Server) me(c echo.Context) error {
	u, err := s.Store.UserByName(c.Request().Context(), subject(c))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, userView(u))
}

func (s *Server) listUsers(c echo.Context) error {
	status := c.QueryParam("status")
	if status != "" && status != store.UserActive && status != store.UserPending && status != store.UserDisabled {
		return echo.NewHTTPError(http.StatusBadRequest, "status: active, pending or disabled")
	}
	us, err := s.Store.ListUsers(c.Request().Context(), status)
	if err != nil {
		return err
	}
	out := make([]UserView, 0, len(us))
	for i := range us {
		out = append(out, userView(&us[i]))
	}
	return c.JSON(http.StatusOK, map[string]any{"users": out})
}

func (s *Server) setStatus(c echo.Context, status string) error {
	name := c.Param("name")
	if name == subject(c) {
		return echo.NewHTTPError(http.StatusBadRequest, "an admin does not change their own account's status")
	}
	if err := s.Store.SetUserStatus(c.Request().Context(), name, status, subject(c), time.Now().UTC()); err != nil {
		return err
	}
	u, err := s.Store.UserByName(c.Request().Context(), name)
	if err != nil {
		return err
	}
	s.Log.Info("user status changed", "username", name, "status", status, "by", subject(c))
	return c.JSON(http.StatusOK, userView(u))
}

func (s *Server) approveUser(c echo.Context) error { return s.setStatus(c, store.UserActive) }
func (s *Server) disableUser(c echo.Context) error { return s.setStatus(c, store.UserDisabled) }

// createPasswordReset: an admin gets a one-time token (valid one hour) to
// hand to the user out of band.
func (s *Server) createPasswordReset(c echo.Context) error {
	ctx := c.Request().Context()
	name := c.Param("name")
	if _, err := s.Store.UserByName(ctx, name); err != nil {
		return err
	}
	tok := auth.NewSecret(24)
	exp := time.Now().Add(resetTTL).UTC()
	if err := s.Store.CreatePasswordReset(ctx, &store.PasswordReset{TokenHash: auth.HashSecret(tok), Username: name, CreatedBy: subject(c), ExpiresAt: exp}); err != nil {
		return err
	}
	s.Log.Info("password reset token issued", "username", name, "by", subject(c))
	return c.JSON(http.StatusCreated, map[string]any{"token": tok, "expires_at": exp})
}

type resetRequest struct {
	Token    string `json:"token"`
	Password string `json:"password"`
}

// resetPassword: POST /auth/reset {token, password}, unauthenticated.
func (s *Server) resetPassword(c echo.Context) error {
	var req resetRequest
	if err := bind(c, &req); err != nil {
		return err
	}
	if len(req.Password) < 12 || len(req.Password) > 72 {
		return echo.NewHTTPError(http.StatusBadRequest, "password: 12 to 72 characters")
	}
	if req.Token == "" || len(req.Token) > 128 {
		s.Metrics.Reject(metrics.RejectLogin)
		return echo.NewHTTPError(http.StatusUnauthorized, "reset token unknown, used or expired")
	}
	hash, err := auth.HashPassword(req.Password)
	if err != nil {
		return echo.NewHTTPError(http.StatusBadRequest, err.Error())
	}
	user, err := s.Store.UsePasswordReset(c.Request().Context(), auth.HashSecret(req.Token), hash, time.Now())
	if err != nil {
		if errors.Is(err, store.ErrTokenUnknown) || errors.Is(err, store.ErrTokenUsed) || errors.Is(err, store.ErrTokenExpired) {
			s.Metrics.Reject(metrics.RejectLogin)
			return echo.NewHTTPError(http.StatusUnauthorized, "reset token unknown, used or expired")
		}
		return err
	}
	s.Log.Info("password reset", "username", user, "remote", c.RealIP())
	return c.NoContent(http.StatusNoContent)
}
