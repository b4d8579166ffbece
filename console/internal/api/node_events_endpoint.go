package api

import (
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"
)

// registerNodeEvents adds the routes of events nodes report.
func (s *Server) registerNodeEvents(v1 *echo.Group) {
	v1.GET("/nodes/:name/events", s.nodeEvents, s.userAuth, s.requireRole(fleetRoles...))
}

// defaultEventsLimit is a page of node events when ?limit= is not given.
const defaultEventsLimit = 100

// nodeEvents serves ?limit=: what the node did on its own (edge autonomy's
// sheds and resumes, with the forecast each rests on), newest first.
func (s *Server) nodeEvents(c echo.Context) error {
	limit := defaultEventsLimit
	if l := c.QueryParam("limit"); l != "" {
		var err error
		if limit, err = strconv.Atoi(l); err != nil {
			return echo.NewHTTPError(http.StatusBadRequest, "limit: not a number")
		}
	}
	evs, err := s.Fleet.NodeEvents(c.Request().Context(), c.Param("name"), limit)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"node": c.Param("name"), "events": evs})
}
