package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/cloudskin/cloudskin/console/internal/metrics"
	"github.com/cloudskin/cloudskin/console/internal/placement"
	"github.com/cloudskin/cloudskin/console/internal/store"
)

// checkpointRoute is where nodes upload cell checkpoints; like module
// uploads it is exempt from the global body limit (the service bounds it).
const checkpointRoute = "/api/v1/cells/:id/checkpoints/:ckpt"

func (s *Server) registerPlacement(v1 *echo.Group) {
	v1.PUT("/cells/:id/checkpoints/:ckpt", s.putCheckpoint, s.nodeAuth)
	v1.GET("/cells/:id/checkpoints/:ckpt", s.getCheckpoint, s.userOrNodeAuth(cellWriteRoles...))
	v1.GET("/cells/:id/checkpoints", s.listCheckpoints, s.userAuth, s.requireRole(fleetRoles...))
	v1.POST("/cells/:id/migrate", s.migrateCell, s.userAuth, s.requireRole(cellWriteRoles...))
	v1.GET("/moves", s.listMoves, s.userAuth, s.requireRole(fleetRoles...))
	v1.GET("/moves/:id", s.getMove, s.userAuth, s.requireRole(fleetRoles...))
	v1.GET("/decisions", s.listDecisions, s.userAuth, s.requireRole(fleetRoles...))
	v1.GET("/targets", s.listTargets, s.userAuth, s.requireRole(fleetRoles...))
	v1.POST("/apps", s.createApp, s.userAuth, s.requireRole(cellWriteRoles...))
	v1.GET("/apps", s.listApps, s.userAuth, s.requireRole(fleetRoles...))
	v1.GET("/apps/:name", s.getApp, s.userAuth, s.requireRole(fleetRoles...))
	v1.PUT("/apps/:name", s.putApp, s.userAuth, s.requireRole(cellWriteRoles...))
	v1.DELETE("/apps/:name", s.deleteApp, s.userAuth, s.requireRole(cellWriteRoles...))
}

// placementError maps the placement package's errors.
func placementError(err error) error {
	switch {
	case errors.Is(err, placement.ErrInvalid):
		return echo.NewHTTPError(http.StatusBadRequest, err.Error())
	case errors.Is(err, placement.ErrConflict), errors.Is(err, store.ErrMoveOpen):
		return echo.NewHTTPError(http.StatusConflict, err.Error())
	case errors.Is(err, placement.ErrForbidden):
		return echo.NewHTTPError(http.StatusForbidden, err.Error())
	case errors.Is(err, placement.ErrTooLarge):
		return echo.NewHTTPError(http.StatusRequestEntityTooLarge, err.Error())
	case errors.Is(err, placement.ErrUnplaceable):
		return echo.NewHTTPError(http.StatusUnprocessableEntity, err.Error())
	}
	return err
}

// putCheckpoint: PUT /cells/{id}/checkpoints/{ckpt} (node), the raw
// checkpoint, with X-Checkpoint-Seq and X-Checkpoint-Reason.
func (s *Server) putCheckpoint(c echo.Context) error {
	node, _ := c.Get("node").(string)
	seq, err := strconv.ParseUint(c.Request().Header.Get("X-Checkpoint-Seq"), 10, 64)
	if err != nil {
		return echo.NewHTTPError(http.StatusBadRequest, "X-Checkpoint-Seq must be the checkpoint's sequence number")
	}
	size := c.Request().ContentLength
	if size < 0 {
		return echo.NewHTTPError(http.StatusLengthRequired, "send Content-Length")
	}
	row, err := s.Placement.Checkpoints.Put(c.Request().Context(), node, c.Param("id"), c.Param("ckpt"), seq,
		c.Request().Header.Get("X-Checkpoint-Reason"), size, c.Request().Body)
	if err != nil {
		if errors.Is(err, placement.ErrForbidden) {
			s.Metrics.Reject(metrics.RejectForbidden)
		}
		return placementError(err)
	}
	s.Placement.Kick() // a migration may wait for it
	return c.JSON(http.StatusCreated, row)
}

// getCheckpoint: the node a cell is bound to (restoring it), or an operator.
func (s *Server) getCheckpoint(c echo.Context) error {
	node, _ := c.Get("node").(string)
	row, rc, err := s.Placement.Checkpoints.Open(c.Request().Context(), node, c.Param("id"), c.Param("ckpt"))
	if err != nil {
		if errors.Is(err, placement.ErrForbidden) {
			s.Metrics.Reject(metrics.RejectForbidden)
		}
		return placementError(err)
	}
	defer rc.Close()
	c.Response().Header().Set("X-Checkpoint-Seq", strconv.FormatUint(row.Seq, 10))
	c.Response().Header().Set("X-Checkpoint-SHA256", row.SHA256)
	c.Response().Header().Set(echo.HeaderContentLength, strconv.FormatInt(row.Bytes, 10))
	return c.Stream(http.StatusOK, "application/octet-stream", rc)
}

func (s *Server) listCheckpoints(c echo.Context) error {
	rows, err := s.Placement.Checkpoints.List(c.Request().Context(), c.Param("id"))
	if err != nil {
		return placementError(err)
	}
	return c.JSON(http.StatusOK, map[string]any{"checkpoints": rows})
}

type migrateRequest struct {
	// To is the target node; empty lets the Planner choose.
	To string `json:"to"`
}

// migrateCell: POST /cells/{id}/migrate {"to": "edge-2"} (or {} to let the
// Planner choose). 202 with the move and the decision behind it.
func (s *Server) migrateCell(c echo.Context) error {
	var req migrateRequest
	if c.Request().ContentLength != 0 {
		if err := bind(c, &req); err != nil {
			return err
		}
	}
	mv, dec, err := s.Placement.Migrate(c.Request().Context(), c.Param("id"), req.To, subject(c))
	if err != nil {
		return placementError(err)
	}
	c.Response().Header().Set(echo.HeaderLocation, "/api/v1/moves/"+mv.ID)
	return c.JSON(http.StatusAccepted, map[string]any{"move": mv, "decision": dec})
}

func (s *Server) listMoves(c echo.Context) error {
	limit, err := queryInt(c, "limit", 100, 1, 1000)
	if err != nil {
		return err
	}
	ms, err := s.Store.Moves(c.Request().Context(), c.QueryParam("cell"), limit)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"moves": ms})
}

func (s *Server) getMove(c echo.Context) error {
	mv, err := s.Store.MoveByID(c.Request().Context(), c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, mv)
}

// listDecisions: GET /decisions?cell=&app=&before=&limit=, newest first.
func (s *Server) listDecisions(c echo.Context) error {
	limit, err := queryInt(c, "limit", 50, 1, 500)
	if err != nil {
		return err
	}
	var before uint64
	if b := c.QueryParam("before"); b != "" {
		if before, err = strconv.ParseUint(b, 10, 64); err != nil {
			return echo.NewHTTPError(http.StatusBadRequest, "before must be a decision id")
		}
	}
	rows, err := s.Store.Decisions(c.Request().Context(), store.DecisionQuery{Cell: c.QueryParam("cell"), App: c.QueryParam("app"), BeforeID: before, Limit: limit})
	if err != nil {
		return err
	}
	out := make([]json.RawMessage, 0, len(rows))
	for _, r := range rows {
		out = append(out, placement.DecisionJSON(r))
	}
	return c.JSON(http.StatusOK, map[string]any{"decisions": out})
}

func (s *Server) createApp(c echo.Context) error {
	var spec placement.AppSpec
	if err := bind(c, &spec); err != nil {
		return err
	}
	v, created, err := s.Placement.PutApp(c.Request().Context(), spec, subject(c), true)
	if err != nil {
		return placementError(err)
	}
	c.Response().Header().Set(echo.HeaderLocation, "/api/v1/apps/"+v.Name)
	code := http.StatusOK
	if created {
		code = http.StatusCreated
	}
	return c.JSON(code, v)
}

func (s *Server) putApp(c echo.Context) error {
	var spec placement.AppSpec
	if err := bind(c, &spec); err != nil {
		return err
	}
	if spec.Name == "" {
		spec.Name = c.Param("name")
	}
	if spec.Name != c.Param("name") {
		return echo.NewHTTPError(http.StatusBadRequest, "the app's name and the URL disagree")
	}
	v, created, err := s.Placement.PutApp(c.Request().Context(), spec, subject(c), false)
	if err != nil {
		return placementError(err)
	}
	code := http.StatusOK
	if created {
		code = http.StatusCreated
	}
	return c.JSON(code, v)
}

func (s *Server) listApps(c echo.Context) error {
	vs, err := s.Placement.ListApps(c.Request().Context())
	if err != nil {
		return placementError(err)
	}
	return c.JSON(http.StatusOK, map[string]any{"apps": vs})
}

func (s *Server) getApp(c echo.Context) error {
	v, err := s.Placement.GetApp(c.Request().Context(), c.Param("name"))
	if err != nil {
		return placementError(err)
	}
	return c.JSON(http.StatusOK, v)
}

func (s *Server) deleteApp(c echo.Context) error {
	if err := s.Placement.DeleteApp(c.Request().Context(), c.Param("name"), subject(c)); err != nil {
		return placementError(err)
	}
	return c.NoContent(http.StatusNoContent)
}

// queryInt reads an optional integer query parameter within [lo, hi].
func queryInt(c echo.Context, name string, def, lo, hi int) (int, error) {
	v := c.QueryParam(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, echo.NewHTTPError(http.StatusBadRequest, name+": must be a number from "+strconv.Itoa(lo)+" to "+strconv.Itoa(hi))
	}
	return n, nil
}

// listTargets: the moving targets' newest positions, as nodes reported them.
func (s *Server) listTargets(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]any{"targets": s.Placement.Targets()})
}
