package api

import "github.com/labstack/echo/v4"

// registerNodeEvents adds the routes of events nodes report.
func (s *Server) registerNodeEvents(v1 *echo.Group) {}
