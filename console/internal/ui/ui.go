// Package ui serves the operator web UI under /ui/: server-rendered pages
// (html/template through echo) with htmx for actions and server-sent events
// for live charts. It is a client of the console's own HTTP API, called in
// process: every read and every action goes through the same handler, the
// same authorization and the same validation as a curl user, so the UI
// holds no business rule and shows the API's errors word for word.
package ui

import (
	"context"
	"errors"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"

	"github.com/cloudskin/cloudskin/console/internal/ota"
	assets "github.com/cloudskin/cloudskin/ui"
)

// Prefix is where the UI lives; everything else belongs to the API.
const Prefix = "/ui"

// Config is what the UI needs.
type Config struct {
	// API is the console's API handler; the UI calls it in process.
	API http.Handler
	Log *slog.Logger
	// SecureCookies marks cookies Secure (set when the console is reached
	// over TLS, directly or through a proxy). Requests over TLS get Secure
	// cookies regardless.
	SecureCookies bool
}

// UI is the web UI's handler.
type UI struct {
	cfg   Config
	echo  *echo.Echo
	pages map[string]*template.Template
	frags *template.Template

	// done is closed at shutdown: live streams (SSE) end so that the HTTP
	// server's graceful shutdown does not wait on them.
	done     chan struct{}
	stopOnce sync.Once
}

// New parses the embedded templates and builds the routes.
func New(cfg Config) (*UI, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	u := &UI{cfg: cfg, done: make(chan struct{}), pages: map[string]*template.Template{}}
	if err := u.parse(); err != nil {
		return nil, err
	}
	u.routes()
	return u, nil
}

// Close ends live streams; register it with http.Server.RegisterOnShutdown.
func (u *UI) Close() { u.stopOnce.Do(func() { close(u.done) }) }

// Wrap returns the console's handler: /ui/… (and / as a redirect to it)
// to the UI, every other path to api.
func (u *UI) Wrap(api http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		if p == "/" || p == Prefix || strings.HasPrefix(p, Prefix+"/") {
			u.echo.ServeHTTP(w, r)
			return
		}
		api.ServeHTTP(w, r)
	})
}

// ServeHTTP serves the UI's own routes (tests and benchmarks).
func (u *UI) ServeHTTP(w http.ResponseWriter, r *http.Request) { u.echo.ServeHTTP(w, r) }

func (u *UI) parse() error {
	funcs := templateFuncs()
	pages, err := fs.Glob(assets.FS, "templates/page_*.html")
	if err != nil {
		return err
	}
	for _, p := range pages {
		t, err := template.New("").Funcs(funcs).ParseFS(assets.FS, "templates/layout.html", "templates/fragments.html", p)
		if err != nil {
			return fmt.Errorf("ui template %s: %w", p, err)
		}
		name := strings.TrimSuffix(strings.TrimPrefix(p, "templates/page_"), ".html")
		u.pages[name] = t
	}
	u.frags, err = template.New("").Funcs(funcs).ParseFS(assets.FS, "templates/fragments.html")
	if err != nil {
		return fmt.Errorf("ui fragments: %w", err)
	}
	return nil
}

func (u *UI) routes() {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = u.errorHandler
	e.Use(middleware.Recover())
	e.Use(u.headers)
	u.echo = e

	static, _ := fs.Sub(assets.FS, "static")
	sh := http.StripPrefix(Prefix+"/static/", http.FileServer(http.FS(static)))
	e.GET(Prefix+"/static/*", func(c echo.Context) error {
		c.Response().Header().Set("Cache-Control", "public, max-age=3600")
		sh.ServeHTTP(c.Response(), c.Request())
		return nil
	})
	e.GET("/", func(c echo.Context) error { return c.Redirect(http.StatusFound, Prefix+"/") })
	e.GET(Prefix, func(c echo.Context) error { return c.Redirect(http.StatusFound, Prefix+"/") })
	e.GET(Prefix+"/login", u.loginPage)
	e.POST(Prefix+"/login", u.loginSubmit, u.limitBody(1<<16))

	g := e.Group(Prefix, u.limitBody(1<<20), u.session)
	g.GET("/", u.home)
	g.POST("/logout", u.logout)
	fleet := u.requireRole(fleetRoles...)
	g.GET("/fleet", u.fleetPage, fleet)
	g.GET("/nodes/:name", u.nodePage, fleet)
	g.GET("/nodes/:name/live", u.nodeLive, fleet)
	g.GET("/nodes/:name/cells", u.nodeCells, fleet)
	g.GET("/apps", u.appsPage, fleet)
	g.GET("/apps/cells", u.appsCells, fleet)
	g.POST("/apps", u.createApp, fleet)
	g.POST("/apps/:name/scale", u.scaleApp, fleet)
	g.POST("/apps/:name/delete", u.deleteApp, fleet)
	g.POST("/cells/:id/migrate", u.migrateCell, fleet)
	g.GET("/moves/:id", u.moveStatus, fleet)
	g.GET("/decisions", u.decisionsPage, fleet)
	g.GET("/models", u.modelsPage, fleet)
	g.POST("/models/train", u.trainModels, fleet)
	g.POST("/models/:id/promote", u.promoteModel, fleet)
	g.POST("/models/rollback", u.rollbackModel, fleet)
	g.GET("/updates", u.updatesPage, fleet)
	g.GET("/updates/rollouts", u.updatesRollouts, fleet)
	g.GET("/rollouts", func(c echo.Context) error { return c.Redirect(http.StatusFound, Prefix+"/updates") }, fleet)
	g.POST("/rollouts", u.startRollout, fleet)
	g.GET("/rollouts/:id", u.rolloutPage, fleet)
	g.GET("/rollouts/:id/progress", u.rolloutProgress, fleet)
	g.POST("/rollouts/:id/cancel", u.cancelRollout, fleet)
	ds := u.requireRole(dataspaceRoles...)
	g.GET("/dataspace", u.dataspacePage, ds)
	g.POST("/contracts", u.requestContract, ds)
	g.POST("/contracts/:id/agree", u.agreeContract, ds)
	g.POST("/contracts/:id/terminate", u.terminateContract, ds)
	admin := u.requireRole(roleAdmin)
	g.GET("/admin", u.adminPage, admin)
	g.POST("/users/:name/approve", u.approveUser, admin)
	g.POST("/users/:name/disable", u.disableUser, admin)
	g.POST("/tokens", u.createToken, admin)
	// Module and bundle uploads are the large bodies (the API's limits are
	// 32 MiB and ota.MaxBundleBytes; room is left for the multipart framing).
	// They also get the API's upload time: the server's ReadTimeout (a
	// minute) would cut a large upload on a site link.
	e.POST(Prefix+"/modules", u.uploadModule, u.readDeadline(10*time.Minute), u.limitBody(33<<20), u.session, fleet)
	e.POST(Prefix+"/bundles", u.uploadBundle, u.readDeadline(30*time.Minute), u.limitBody(ota.MaxBundleBytes+1<<20), u.session, fleet)
}

// headers sets what every UI answer carries: no framing, no sniffing, and
// a content security policy that allows only the console's own scripts.
func (u *UI) headers(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		h := c.Response().Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'")
		return next(c)
	}
}

// readDeadline lets the request's body take d to arrive (best effort: a
// connection that cannot set it keeps the server's ReadTimeout).
func (u *UI) readDeadline(d time.Duration) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			_ = http.NewResponseController(c.Response()).SetReadDeadline(time.Now().Add(d))
			return next(c)
		}
	}
}

func (u *UI) limitBody(n int64) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			if c.Request().Body != nil {
				c.Request().Body = http.MaxBytesReader(c.Response(), c.Request().Body, n)
			}
			return next(c)
		}
	}
}

// pageData is what every page template gets.
type pageData struct {
	Title   string
	Nav     string // the active navigation entry
	User    *userView
	CSRF    string
	Fleet   bool // the user may see fleet pages
	Admin   bool
	Flash   string
	Error   string
	Data    any
	Refresh bool
}

// render writes a full page.
func (u *UI) render(c echo.Context, code int, page, title string, data any) error {
	t := u.pages[page]
	if t == nil {
		return fmt.Errorf("ui: no page %q", page)
	}
	pd := pageData{Title: title, Nav: page, Data: data}
	if s := sess(c); s != nil {
		pd.User, pd.CSRF = &s.User, s.CSRF
		pd.Fleet = hasRole(s.User.Role, fleetRoles...)
		pd.Admin = s.User.Role == roleAdmin
	}
	if f, ok := data.(flashed); ok {
		pd.Flash, pd.Error = f.flash()
	}
	var b strings.Builder
	if err := t.ExecuteTemplate(&b, "layout", pd); err != nil {
		return fmt.Errorf("ui: render %s: %w", page, err)
	}
	return c.HTML(code, b.String())
}

// fragment writes one named fragment (htmx swaps it in).
func (u *UI) fragment(c echo.Context, code int, name string, data any) error {
	var b strings.Builder
	if err := u.frags.ExecuteTemplate(&b, name, data); err != nil {
		return fmt.Errorf("ui: fragment %s: %w", name, err)
	}
	return c.HTML(code, b.String())
}

// flashed is page data that carries a message for the alert region.
type flashed interface{ flash() (ok, err string) }

// outcome is an action's result as a fragment: a message, or an error in
// the API's words with its status.
type outcome struct {
	OK    string
	Err   string
	Code  int
	Extra any
}

// result answers an action. htmx requests get the "outcome" fragment (or
// name, when given) with the API's status code (htmx is configured to swap
// error answers too); a plain form post gets a page with the same alert.
func (u *UI) result(c echo.Context, name string, ok string, err error, extra any) error {
	o := outcome{OK: ok, Code: http.StatusOK, Extra: extra}
	if err != nil {
		o.OK, o.Err, o.Code = "", errorText(err), statusOf(err)
		if o.Code >= 500 {
			u.cfg.Log.Error("ui action failed", "path", c.Request().URL.Path, "err", err)
		}
	}
	if name == "" {
		name = "outcome"
	}
	if c.Request().Header.Get("HX-Request") == "true" {
		return u.fragment(c, o.Code, name, o)
	}
	return u.render(c, o.Code, "result", "Result", o)
}

// errorHandler renders errors as pages (or alert fragments for htmx).
func (u *UI) errorHandler(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	code, msg := statusOf(err), errorText(err)
	var he *echo.HTTPError
	if errors.As(err, &he) {
		code, msg = he.Code, fmt.Sprint(he.Message)
	}
	if code >= 500 {
		u.cfg.Log.Error("ui request failed", "path", c.Request().URL.Path, "err", err)
		if !errors.As(err, new(*apiError)) {
			msg = "internal error (details in the console log)"
		}
	}
	if c.Request().Header.Get("HX-Request") == "true" {
		_ = u.fragment(c, code, "outcome", outcome{Err: msg, Code: code})
		return
	}
	_ = u.render(c, code, "error", http.StatusText(code), outcome{Err: msg, Code: code})
}

// stopping is a context cancelled when the request ends or the UI stops.
func (u *UI) stopping(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(parent)
	go func() {
		select {
		case <-u.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}
