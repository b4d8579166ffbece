package ui

import (
	"bytes"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/cloudskin/cloudskin/console/internal/cells"
	"github.com/cloudskin/cloudskin/console/internal/fleet"
	"github.com/cloudskin/cloudskin/console/internal/modules"
	"github.com/cloudskin/cloudskin/console/internal/placement"
	"github.com/cloudskin/cloudskin/console/internal/planner"
	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

type appsData struct {
	Modules []modules.Module
	Apps    []placement.AppView
	Cells   cellsData
}

type cellsData struct {
	CSRF  string
	Cells []cells.Cell
	// Targets are the online nodes a cell may be moved to by hand.
	Targets []string
}

func (u *UI) cellsData(c echo.Context) (cellsData, error) {
	ctx, tok := c.Request().Context(), sess(c).Token
	d := cellsData{CSRF: sess(c).CSRF}
	var cs struct {
		Cells []cells.Cell `json:"cells"`
	}
	if err := u.call(ctx, tok, http.MethodGet, "/api/v1/cells", nil, &cs); err != nil {
		return d, err
	}
	var ns struct {
		Nodes []fleet.NodeView `json:"nodes"`
	}
	if err := u.call(ctx, tok, http.MethodGet, "/api/v1/nodes", nil, &ns); err != nil {
		return d, err
	}
	d.Cells = cs.Cells
	for _, n := range ns.Nodes {
		if n.Status == "online" {
			d.Targets = append(d.Targets, n.Name)
		}
	}
	return d, nil
}

func (u *UI) appsPage(c echo.Context) error {
	ctx, tok := c.Request().Context(), sess(c).Token
	var d appsData
	var ms struct {
		Modules []modules.Module `json:"modules"`
	}
	if err := u.call(ctx, tok, http.MethodGet, "/api/v1/modules", nil, &ms); err != nil {
		return err
	}
	var as struct {
		Apps []placement.AppView `json:"apps"`
	}
	if err := u.call(ctx, tok, http.MethodGet, "/api/v1/apps", nil, &as); err != nil {
		return err
	}
	cd, err := u.cellsData(c)
	if err != nil {
		return err
	}
	d.Modules, d.Apps, d.Cells = ms.Modules, as.Apps, cd
	return u.render(c, http.StatusOK, "apps", "Apps and cells", d)
}

// appsCells is the live cells table (htmx polls it).
func (u *UI) appsCells(c echo.Context) error {
	d, err := u.cellsData(c)
	if err != nil {
		return err
	}
	return u.fragment(c, http.StatusOK, "cells-table", d)
}

// uploadModule takes a multipart file and posts its bytes to the API.
func (u *UI) uploadModule(c echo.Context) error {
	fh, err := c.FormFile("module")
	if err != nil {
		return u.result(c, "", "", &apiError{Code: http.StatusBadRequest, Msg: "choose a .wasm file to upload"}, nil)
	}
	f, err := fh.Open()
	if err != nil {
		return err
	}
	defer f.Close()
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, io.LimitReader(f, 32<<20+1)); err != nil {
		return err
	}
	name := strings.TrimSpace(c.FormValue("name"))
	if name == "" {
		name = strings.TrimSuffix(fh.Filename, ".wasm")
	}
	var m modules.Module
	err = u.call(c.Request().Context(), sess(c).Token, http.MethodPost, "/api/v1/modules?name="+url.QueryEscape(name),
		raw{body: buf.Bytes(), contentType: "application/wasm"}, &m)
	if err != nil {
		return u.result(c, "", "", err, nil)
	}
	return u.result(c, "", "Module "+m.Name+" uploaded: "+m.Digest+" ("+humanBytes(m.Size)+"). Reload the page to pick it in the app form.", nil, nil)
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == '\n' || r == ' ' }) {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// createApp builds an AppSpec from the form; the API validates it.
func (u *UI) createApp(c echo.Context) error {
	spec := placement.AppSpec{Name: strings.TrimSpace(c.FormValue("name")), Priority: c.FormValue("priority")}
	cell := placement.AppCell{Name: strings.TrimSpace(c.FormValue("cell")), Module: strings.TrimSpace(c.FormValue("module")),
		Outputs: splitList(c.FormValue("outputs"))}
	if topics := splitList(c.FormValue("topics")); len(topics) > 0 {
		cell.Inputs = []protocol.Input{{Name: "sensors", Topics: topics}}
	}
	if in := strings.TrimSpace(c.FormValue("input")); in != "" && len(cell.Inputs) == 1 {
		cell.Inputs[0].Name = in
	}
	spec.Cells = []placement.AppCell{cell}
	if r := c.FormValue("replicas"); r != "" {
		n, err := strconv.Atoi(r)
		if err != nil {
			return u.result(c, "", "", &apiError{Code: http.StatusBadRequest, Msg: "replicas: not a number"}, nil)
		}
		spec.Replicas = n
	}
	spec.Constraints = planner.Constraints{Arch: c.FormValue("arch"), Power: c.FormValue("power"), Pinned: strings.TrimSpace(c.FormValue("pinned"))}
	var v placement.AppView
	if err := u.call(c.Request().Context(), sess(c).Token, http.MethodPost, "/api/v1/apps", spec, &v); err != nil {
		return u.result(c, "", "", err, nil)
	}
	c.Response().Header().Set("HX-Trigger", "cells-changed")
	return u.result(c, "app-created", "App "+v.Name+" created.", nil, v)
}

// scaleApp sets an app's replicas: the app as it is, with the new count,
// through PUT (the API reconciles its cells).
func (u *UI) scaleApp(c echo.Context) error {
	ctx, tok, name := c.Request().Context(), sess(c).Token, c.Param("name")
	n, err := strconv.Atoi(c.FormValue("replicas"))
	if err != nil {
		return u.result(c, "", "", &apiError{Code: http.StatusBadRequest, Msg: "replicas: not a number"}, nil)
	}
	var v placement.AppView
	if err := u.call(ctx, tok, http.MethodGet, "/api/v1/apps/"+url.PathEscape(name), nil, &v); err != nil {
		return u.result(c, "", "", err, nil)
	}
	spec := v.AppSpec
	spec.Replicas = n
	if err := u.call(ctx, tok, http.MethodPut, "/api/v1/apps/"+url.PathEscape(name), spec, &v); err != nil {
		return u.result(c, "", "", err, nil)
	}
	c.Response().Header().Set("HX-Trigger", "cells-changed")
	return u.result(c, "", "App "+name+" scaled to "+strconv.Itoa(v.Replicas)+" replica(s).", nil, nil)
}

func (u *UI) deleteApp(c echo.Context) error {
	name := c.Param("name")
	err := u.call(c.Request().Context(), sess(c).Token, http.MethodDelete, "/api/v1/apps/"+url.PathEscape(name), nil, nil)
	if err == nil {
		c.Response().Header().Set("HX-Trigger", "cells-changed")
	}
	return u.result(c, "", "App "+name+" deleted with its cells.", err, nil)
}

type decisionView struct {
	ID uint64 `json:"id"`
	planner.Decision
}

type moveData struct {
	Move     store.Move
	Decision *decisionView
}

// migrateCell asks the API to move a cell (to a node, or "" to let the
// Planner choose) and answers with the move, which then polls itself.
func (u *UI) migrateCell(c echo.Context) error {
	id := c.Param("id")
	body := map[string]string{}
	if to := c.FormValue("to"); to != "" {
		body["to"] = to
	}
	var resp struct {
		Move     store.Move    `json:"move"`
		Decision *decisionView `json:"decision"`
	}
	if err := u.call(c.Request().Context(), sess(c).Token, http.MethodPost, "/api/v1/cells/"+url.PathEscape(id)+"/migrate", body, &resp); err != nil {
		return u.result(c, "", "", err, nil)
	}
	return u.result(c, "move", "", nil, moveData{Move: resp.Move, Decision: resp.Decision})
}

// moveStatus is one move's phase (htmx polls it while the move is open).
func (u *UI) moveStatus(c echo.Context) error {
	var mv store.Move
	if err := u.call(c.Request().Context(), sess(c).Token, http.MethodGet, "/api/v1/moves/"+url.PathEscape(c.Param("id")), nil, &mv); err != nil {
		return u.result(c, "", "", err, nil)
	}
	d := moveData{Move: mv}
	// The decision that started the move, so its why stays in view.
	var ds struct {
		Decisions []decisionView `json:"decisions"`
	}
	if mv.DecisionID != 0 && u.call(c.Request().Context(), sess(c).Token, http.MethodGet,
		"/api/v1/decisions?limit=1&before="+strconv.FormatUint(mv.DecisionID+1, 10)+"&cell="+url.QueryEscape(mv.Cell), nil, &ds) == nil {
		for i := range ds.Decisions {
			if ds.Decisions[i].ID == mv.DecisionID {
				d.Decision = &ds.Decisions[i]
			}
		}
	}
	return u.result(c, "move", "", nil, d)
}

type decisionsData struct {
	Cell, App string
	Decisions []decisionView
}

func (u *UI) decisionsPage(c echo.Context) error {
	d := decisionsData{Cell: c.QueryParam("cell"), App: c.QueryParam("app")}
	q := url.Values{"limit": {"50"}}
	if d.Cell != "" {
		q.Set("cell", d.Cell)
	}
	if d.App != "" {
		q.Set("app", d.App)
	}
	var resp struct {
		Decisions []decisionView `json:"decisions"`
	}
	if err := u.call(c.Request().Context(), sess(c).Token, http.MethodGet, "/api/v1/decisions?"+q.Encode(), nil, &resp); err != nil {
		return err
	}
	d.Decisions = resp.Decisions
	return u.render(c, http.StatusOK, "decisions", "Planner decisions", d)
}
