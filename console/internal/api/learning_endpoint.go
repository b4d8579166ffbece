package api

import "github.com/labstack/echo/v4"

// registerLearning adds the learning plane's routes.
func (s *Server) registerLearning(v1 *echo.Group) {}
