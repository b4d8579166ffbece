package ui

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
)

const (
	// sessionCookie holds the console JWT, the same token the API takes as
	// a bearer token. HttpOnly: page scripts never see it.
	sessionCookie = "cloudskin_session"
	// loginCookie is the login form's double-submit CSRF token (there is
	// no session to derive one from yet).
	loginCookie = "cloudskin_login"
	csrfHeader  = "X-CSRF-Token"
	csrfField   = "_csrf"
)

const (
	roleAdmin    = "admin"
	roleOperator = "operator"
	roleProvider = "provider"
	roleConsumer = "consumer"
)

var (
	fleetRoles     = []string{roleAdmin, roleOperator}
	dataspaceRoles = []string{roleAdmin, roleProvider, roleConsumer}
)

func hasRole(role string, roles ...string) bool {
	for _, r := range roles {
		if r == role {
			return true
		}
	}
	return false
}

// userView is GET /api/v1/users/me.
type userView struct {
	Username string `json:"username"`
	Role     string `json:"role"`
	Status   string `json:"status"`
}

// session is the logged-in user of one request.
type session struct {
	Token string
	User  userView
	CSRF  string
}

func sess(c echo.Context) *session {
	s, _ := c.Get("ui.session").(*session)
	return s
}

// csrfToken is the per-session CSRF token: a hash of the session's JWT.
// A page of another site can neither read the HttpOnly cookie nor this
// token (same-origin policy), so it cannot forge a request that carries
// it; the token changes with every login.
func csrfToken(jwt string) string {
	sum := sha256.Sum256([]byte("cloudskin-ui-csrf\x00" + jwt))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func sameToken(a, b string) bool {
	return a != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

func (u *UI) cookie(c echo.Context, name, value string, expires time.Time) {
	ck := &http.Cookie{
		Name: name, Value: value, Path: Prefix + "/", HttpOnly: true, SameSite: http.SameSiteStrictMode,
		Secure: u.cfg.SecureCookies || c.Request().TLS != nil || c.Request().Header.Get("X-Forwarded-Proto") == "https",
	}
	if value == "" {
		ck.MaxAge = -1
		ck.Expires = time.Unix(1, 0)
	} else if !expires.IsZero() {
		ck.Expires = expires
	}
	c.SetCookie(ck)
}

// session requires a valid login cookie, checked by the API itself (GET
// /users/me: the account as it is now), and a CSRF token on every request
// that is not a read.
func (u *UI) session(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		ck, err := c.Cookie(sessionCookie)
		if err != nil || ck.Value == "" {
			return u.toLogin(c, "")
		}
		var me userView
		if err := u.call(c.Request().Context(), ck.Value, http.MethodGet, "/api/v1/users/me", nil, &me); err != nil {
			var ae *apiError
			if errors.As(err, &ae) && ae.Code == http.StatusUnauthorized {
				u.cookie(c, sessionCookie, "", time.Time{})
				return u.toLogin(c, ae.Msg)
			}
			return err
		}
		s := &session{Token: ck.Value, User: me, CSRF: csrfToken(ck.Value)}
		c.Set("ui.session", s)
		switch c.Request().Method {
		case http.MethodGet, http.MethodHead:
		default:
			got := c.Request().Header.Get(csrfHeader)
			if got == "" {
				got = c.FormValue(csrfField)
			}
			if !sameToken(got, s.CSRF) {
				u.cfg.Log.Warn("ui request without a valid CSRF token refused", "user", me.Username, "path", c.Request().URL.Path)
				return echo.NewHTTPError(http.StatusForbidden, "missing or wrong CSRF token: reload the page and try again")
			}
		}
		return next(c)
	}
}

// toLogin sends a browser to the login page (htmx: a full redirect).
func (u *UI) toLogin(c echo.Context, why string) error {
	to := Prefix + "/login"
	q := url.Values{}
	if c.Request().Method == http.MethodGet && c.Request().Header.Get("HX-Request") != "true" {
		q.Set("next", c.Request().URL.RequestURI())
	}
	if why != "" {
		q.Set("why", why)
	}
	if len(q) > 0 {
		to += "?" + q.Encode()
	}
	if c.Request().Header.Get("HX-Request") == "true" {
		c.Response().Header().Set("HX-Redirect", to)
		return c.NoContent(http.StatusUnauthorized)
	}
	if strings.HasSuffix(c.Path(), "/live") { // an event stream cannot follow a redirect
		return c.NoContent(http.StatusUnauthorized)
	}
	return c.Redirect(http.StatusSeeOther, to)
}

func (u *UI) requireRole(roles ...string) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			s := sess(c)
			if s == nil || !hasRole(s.User.Role, roles...) {
				return echo.NewHTTPError(http.StatusForbidden, "this page needs role "+strings.Join(roles, " or ")+"; you are logged in as "+roleOf(s))
			}
			return next(c)
		}
	}
}

func roleOf(s *session) string {
	if s == nil {
		return "nobody"
	}
	return s.User.Username + " (" + s.User.Role + ")"
}

type loginData struct {
	CSRF, Next, Username, Err, Info string
}

func (d loginData) flash() (string, string) { return d.Info, d.Err }

func (u *UI) loginPage(c echo.Context) error {
	tok := newToken()
	u.cookie(c, loginCookie, tok, time.Now().Add(time.Hour))
	return u.render(c, http.StatusOK, "login", "Log in", loginData{CSRF: tok, Next: safeNext(c.QueryParam("next")), Err: c.QueryParam("why"), Info: c.QueryParam("info")})
}

func (u *UI) loginSubmit(c echo.Context) error {
	ck, err := c.Cookie(loginCookie)
	if err != nil || !sameToken(c.FormValue(csrfField), ck.Value) {
		return echo.NewHTTPError(http.StatusForbidden, "the login form expired or came from another site: reload the login page")
	}
	d := loginData{CSRF: ck.Value, Next: safeNext(c.FormValue("next")), Username: c.FormValue("username")}
	var resp struct {
		Token     string    `json:"token"`
		ExpiresAt time.Time `json:"expires_at"`
	}
	err = u.call(c.Request().Context(), "", http.MethodPost, "/api/v1/auth/login",
		map[string]string{"username": d.Username, "password": c.FormValue("password")}, &resp)
	if err != nil {
		d.Err = errorText(err)
		return u.render(c, statusOf(err), "login", "Log in", d)
	}
	u.cookie(c, sessionCookie, resp.Token, resp.ExpiresAt)
	u.cookie(c, loginCookie, "", time.Time{})
	to := d.Next
	if to == "" {
		to = Prefix + "/"
	}
	return c.Redirect(http.StatusSeeOther, to)
}

func (u *UI) logout(c echo.Context) error {
	u.cookie(c, sessionCookie, "", time.Time{})
	if c.Request().Header.Get("HX-Request") == "true" {
		c.Response().Header().Set("HX-Redirect", Prefix+"/login")
		return c.NoContent(http.StatusNoContent)
	}
	return c.Redirect(http.StatusSeeOther, Prefix+"/login?info="+url.QueryEscape("You are logged out."))
}

// safeNext keeps a post-login redirect inside the UI.
func safeNext(next string) string {
	if strings.HasPrefix(next, Prefix+"/") && !strings.HasPrefix(next, "//") && !strings.Contains(next, "\\") {
		return next
	}
	return ""
}

func newToken() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// home sends each role to its first page.
func (u *UI) home(c echo.Context) error {
	if hasRole(sess(c).User.Role, fleetRoles...) {
		return c.Redirect(http.StatusFound, Prefix+"/fleet")
	}
	return c.Redirect(http.StatusFound, Prefix+"/dataspace")
}
