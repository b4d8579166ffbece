package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/cloudskin/cloudskin/console/internal/learning"
	"github.com/cloudskin/cloudskin/console/internal/store"
)

// registerLearning adds the learning plane's routes.
func (s *Server) registerLearning(v1 *echo.Group) {
	auth := []echo.MiddlewareFunc{s.userAuth, s.requireRole(fleetRoles...)}
	v1.GET("/learning/models", s.listModels, auth...)
	v1.GET("/learning/models/:id", s.getModel, auth...)
	v1.POST("/learning/models/:id/promote", s.promoteModel, auth...)
	v1.POST("/learning/rollback", s.rollbackModel, auth...)
	v1.POST("/learning/train", s.trainModels, auth...)
	v1.POST("/learning/predict", s.predict, auth...)
	v1.POST("/learning/recommend", s.recommend, auth...)
}

// modelView is a registry entry as the API shows it.
type modelView struct {
	store.LearningModel
	Features []string        `json:"features"`
	Metrics  json.RawMessage `json:"metrics,omitempty"`
	Model    json.RawMessage `json:"model,omitempty"` // GET /learning/models/{id} only
}

func viewModel(m *store.LearningModel, withParams bool) modelView {
	v := modelView{LearningModel: *m}
	_ = json.Unmarshal([]byte(m.Features), &v.Features)
	if m.Metrics != "" {
		v.Metrics = json.RawMessage(m.Metrics)
	}
	if withParams && m.Params != "" {
		v.Model = json.RawMessage(m.Params)
	}
	return v
}

func (s *Server) learningOn() error {
	if s.Learning == nil {
		return echo.NewHTTPError(http.StatusServiceUnavailable, "the learning plane is not running on this console")
	}
	return nil
}

// listModels: GET /learning/models?kind=&subject=&active=true&limit=
func (s *Server) listModels(c echo.Context) error {
	limit, err := queryInt(c, "limit", 200, 1, 1000)
	if err != nil {
		return err
	}
	q := store.ModelQuery{Kind: c.QueryParam("kind"), Subject: c.QueryParam("subject"), Limit: limit}
	switch c.QueryParam("active") {
	case "", "false":
	case "true":
		q.ActiveOnly = true
	default:
		return echo.NewHTTPError(http.StatusBadRequest, "active must be true or false")
	}
	rows, err := s.Store.ListModels(c.Request().Context(), q)
	if err != nil {
		return err
	}
	out := make([]modelView, 0, len(rows))
	for i := range rows {
		out = append(out, viewModel(&rows[i], false))
	}
	return c.JSON(http.StatusOK, map[string]any{"models": out})
}

func modelID(c echo.Context) (uint64, error) {
	id, err := strconv.ParseUint(c.Param("id"), 10, 64)
	if err != nil {
		return 0, echo.NewHTTPError(http.StatusBadRequest, "model id must be a number")
	}
	return id, nil
}

// getModel: GET /learning/models/{id}, with the model itself.
func (s *Server) getModel(c echo.Context) error {
	id, err := modelID(c)
	if err != nil {
		return err
	}
	m, err := s.Store.ModelByID(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, viewModel(m, true))
}

func learningError(err error) error {
	switch {
	case errors.Is(err, store.ErrNotReady):
		return echo.NewHTTPError(http.StatusConflict, err.Error())
	case errors.Is(err, learning.ErrBadQuery):
		return echo.NewHTTPError(http.StatusBadRequest, err.Error())
	case errors.Is(err, learning.ErrUnknownNode):
		return echo.NewHTTPError(http.StatusNotFound, err.Error())
	}
	return err
}

// promoteModel: POST /learning/models/{id}/promote serves that version.
func (s *Server) promoteModel(c echo.Context) error {
	if err := s.learningOn(); err != nil {
		return err
	}
	id, err := modelID(c)
	if err != nil {
		return err
	}
	m, err := s.Learning.Promote(c.Request().Context(), id)
	if err != nil {
		return learningError(err)
	}
	s.Log.Info("model promoted by operator", "kind", m.Kind, "subject", m.Subject, "version", m.Version, "by", subject(c))
	return c.JSON(http.StatusOK, viewModel(m, false))
}

// rollbackModel: POST /learning/rollback {"kind","subject"} serves the
// previous ready version.
func (s *Server) rollbackModel(c echo.Context) error {
	if err := s.learningOn(); err != nil {
		return err
	}
	var req struct {
		Kind    string `json:"kind"`
		Subject string `json:"subject"`
	}
	if err := bind(c, &req); err != nil {
		return err
	}
	if req.Kind == "" || req.Subject == "" {
		return echo.NewHTTPError(http.StatusBadRequest, "kind and subject are required")
	}
	m, err := s.Learning.Rollback(c.Request().Context(), req.Kind, req.Subject)
	if err != nil {
		return learningError(err)
	}
	s.Log.Info("model rolled back by operator", "kind", m.Kind, "subject", m.Subject, "version", m.Version, "by", subject(c))
	return c.JSON(http.StatusOK, viewModel(m, false))
}

// trainModels: POST /learning/train trains every model now and answers
// with what it did.
func (s *Server) trainModels(c echo.Context) error {
	if err := s.learningOn(); err != nil {
		return err
	}
	rep, err := s.Learning.Train(c.Request().Context(), "manual")
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, rep)
}

// predictRequest names a cell by its app (and cell name, when the app has
// several), or by its module, with its resources, and one node.
type predictRequest struct {
	App       string            `json:"app"`
	Cell      string            `json:"cell"`
	Resources *predictResources `json:"resources"`
	Node      string            `json:"node"`
	Query     *learning.Query   `json:"query"` // everything given directly, instead of app
}

type predictResources struct {
	CPU       *float64 `json:"cpu"`
	MemBytes  *uint64  `json:"mem_bytes"`
	InputRate *float64 `json:"input_rate"`
}

// query resolves the request into a learning query: the app's module,
// CPU, SLO and affinity point, overridden by the resources given.
func (s *Server) query(c echo.Context, app, cell string, q *learning.Query, res *predictResources) (learning.Query, error) {
	var out learning.Query
	switch {
	case q != nil && app != "":
		return out, echo.NewHTTPError(http.StatusBadRequest, "give either app or query, not both")
	case q != nil:
		out = *q
	case app == "":
		return out, echo.NewHTTPError(http.StatusBadRequest, "app is required (or a query with module, cpu, mem_bytes, input_rate)")
	default:
		v, err := s.Placement.GetApp(c.Request().Context(), app)
		if err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return out, echo.NewHTTPError(http.StatusNotFound, "unknown app "+strconv.Quote(app))
			}
			return out, placementError(err)
		}
		out = learning.Query{App: app, CPU: v.CPU, SLOms: v.LatencySLOms, Point: v.Constraints.Point}
		found := false
		for _, ac := range v.Cells {
			if cell == "" || ac.Name == cell {
				out.Module, out.MemBytes, found = ac.Module, uint64(max(ac.Limits.MemoryBytes, 0)), true
				break
			}
		}
		if !found {
			return out, echo.NewHTTPError(http.StatusNotFound, "app "+strconv.Quote(app)+" has no cell "+strconv.Quote(cell))
		}
	}
	if res != nil {
		if res.CPU != nil {
			out.CPU = *res.CPU
		}
		if res.MemBytes != nil {
			out.MemBytes = *res.MemBytes
		}
		if res.InputRate != nil {
			out.InputRate = *res.InputRate
		}
	}
	return out, nil
}

// predict: POST /learning/predict {app, resources, node} → expected latency,
// throughput and energy, each with its contributions.
func (s *Server) predict(c echo.Context) error {
	if err := s.learningOn(); err != nil {
		return err
	}
	var req predictRequest
	if err := bind(c, &req); err != nil {
		return err
	}
	if req.Node == "" {
		return echo.NewHTTPError(http.StatusBadRequest, "node (the placement to predict) is required")
	}
	q, err := s.query(c, req.App, req.Cell, req.Query, req.Resources)
	if err != nil {
		return err
	}
	p, err := s.Learning.Predict(q, req.Node)
	if err != nil {
		return learningError(err)
	}
	return c.JSON(http.StatusOK, map[string]any{"query": q, "prediction": p, "models": s.Learning.Versions(), "outlooks": s.Learning.Outlooks()})
}

// recommend: POST /learning/recommend {app, resources, candidates} → the
// candidates ranked, each with its predictions and top factors.
func (s *Server) recommend(c echo.Context) error {
	if err := s.learningOn(); err != nil {
		return err
	}
	var req struct {
		App        string            `json:"app"`
		Cell       string            `json:"cell"`
		Resources  *predictResources `json:"resources"`
		Query      *learning.Query   `json:"query"`
		Candidates []string          `json:"candidates"`
	}
	if err := bind(c, &req); err != nil {
		return err
	}
	q, err := s.query(c, req.App, req.Cell, req.Query, req.Resources)
	if err != nil {
		return err
	}
	start := time.Now()
	ranked, err := s.Learning.Recommend(q, req.Candidates, s.EnergyHorizon.Hours())
	if err != nil {
		return learningError(err)
	}
	return c.JSON(http.StatusOK, map[string]any{"query": q, "ranked": ranked, "models": s.Learning.Versions(), "outlooks": s.Learning.Outlooks(),
		"took_us": time.Since(start).Microseconds()})
}
