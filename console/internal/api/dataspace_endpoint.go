package api

import (
	"bufio"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/cloudskin/cloudskin/console/internal/objects"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/cloudskin/cloudskin/console/internal/auth"
	"github.com/cloudskin/cloudskin/console/internal/dataspace"
	"github.com/cloudskin/cloudskin/console/internal/metrics"
	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/engine"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// The dataspace's datasets and their datareads. Providers publish datasets
// (an engine pins how readings are stored) and ingest readings in batches;
// reads here are the provider's own and an admin's (contracts, policies and
// the catalog for consumers come next).

const (
	maxDatareadBatch = 10_000
	maxDatareadPage  = 5_000
)

var datasetIDRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

var datasetWriteRoles = []string{store.RoleAdmin, store.RoleProvider}

var dataspaceRoles = []string{store.RoleAdmin, store.RoleProvider, store.RoleConsumer}

func (s *Server) registerDataspace(v1 *echo.Group) {
	v1.POST("/datasets", s.createDataset, s.userAuth, s.requireRole(datasetWriteRoles...))
	v1.GET("/datasets/:id", s.getDataset, s.userAuth, s.requireRole(datasetWriteRoles...))
	v1.PUT("/datasets/:id/policies", s.putPolicies, s.userAuth, s.requireRole(datasetWriteRoles...))
	v1.GET("/datasets/:id/audit", s.datasetAudit, s.userAuth, s.requireRole(datasetWriteRoles...))
	v1.POST("/datasets/:id/datareads", s.addDatareads, s.userAuth, s.requireRole(datasetWriteRoles...))
	v1.GET("/datasets/:id/datareads", s.queryDatareads, s.userAuth, s.requireRole(dataspaceRoles...))
	v1.POST("/datasets/:id/datareads/blobs", s.addBlobs, s.nodeAuth)
	v1.PUT("/datasets/:id/document", s.putDocument, s.userAuth, s.requireRole(datasetWriteRoles...))
	v1.GET("/datasets/:id/document", s.getDocument, s.userAuth, s.requireRole(dataspaceRoles...))
	v1.GET("/catalog", s.catalog, s.userAuth, s.requireRole(dataspaceRoles...))
	v1.POST("/contracts", s.requestContract, s.userAuth, s.requireRole(store.RoleConsumer))
	v1.GET("/contracts", s.listContracts, s.userAuth, s.requireRole(dataspaceRoles...))
	v1.POST("/contracts/:id/agree", s.agreeContract, s.userAuth, s.requireRole(datasetWriteRoles...))
	v1.POST("/contracts/:id/terminate", s.terminateContract, s.userAuth, s.requireRole(dataspaceRoles...))
}

type datasetRequest struct {
	ID               string          `json:"id"`
	Title            string          `json:"title"`
	Description      string          `json:"description"`
	Engine           json.RawMessage `json:"engine"`
	Type             string          `json:"type"`
	PriceCents       int64           `json:"price_cents"`
	License          string          `json:"license"`
	LocationRequired bool            `json:"location_required"`
	// Policies (default: open to everyone).
	AccessPolicy   *dataspace.Policy `json:"access_policy"`
	ContractPolicy *dataspace.Policy `json:"contract_policy"`
}

// DatasetView is a dataset as its owner and admins see it.
type DatasetView struct {
	ID               string          `json:"id"`
	Owner            string          `json:"owner"`
	Title            string          `json:"title"`
	Description      string          `json:"description,omitempty"`
	Engine           json.RawMessage `json:"engine"`
	EngineVersion    int             `json:"engine_version"`
	Type             string          `json:"type"`
	PriceCents       int64           `json:"price_cents"`
	License          string          `json:"license,omitempty"`
	LocationRequired bool            `json:"location_required"`
	Readings         int64           `json:"readings"`
	Rejected         int64           `json:"rejected"`
	AccessPolicy     json.RawMessage `json:"access_policy"`
	ContractPolicy   json.RawMessage `json:"contract_policy"`
	CreatedAt        time.Time       `json:"created_at"`
}

func datasetView(d *store.Dataset) DatasetView {
	return DatasetView{ID: d.ID, Owner: d.Owner, Title: d.Title, Description: d.Description, Engine: json.RawMessage(d.Engine),
		EngineVersion: d.EngineVersion, Type: d.Type, PriceCents: d.PriceCents, License: d.License,
		LocationRequired: d.LocationRequired, Readings: d.Readings, Rejected: d.Rejected, CreatedAt: d.CreatedAt.UTC(),
		AccessPolicy: json.RawMessage(orOpen(d.AccessPolicy)), ContractPolicy: json.RawMessage(orOpen(d.ContractPolicy))}
}

func (s *Server) createDataset(c echo.Context) error {
	var req datasetRequest
	if err := bind(c, &req); err != nil {
		return err
	}
	switch {
	case !datasetIDRE.MatchString(req.ID):
		return echo.NewHTTPError(http.StatusBadRequest, "id: 1-63 lowercase letters, digits or '-'")
	case req.Title == "" || len(req.Title) > 200 || len(req.Description) > 10_000 || len(req.License) > 200:
		return echo.NewHTTPError(http.StatusBadRequest, "title (1-200), description (≤ 10,000) and license (≤ 200 characters)")
	case req.Type != "free" && req.Type != "purchase" && req.Type != "rental":
		return echo.NewHTTPError(http.StatusBadRequest, "type: free, purchase or rental")
	case req.PriceCents < 0 || (req.Type == "free") != (req.PriceCents == 0):
		return echo.NewHTTPError(http.StatusBadRequest, "price_cents: 0 for a free dataset, positive otherwise")
	}
	eng, err := engine.Parse(req.Engine)
	if err != nil {
		return echo.NewHTTPError(http.StatusBadRequest, err.Error())
	}
	canon, _ := json.Marshal(eng)
	access, contract, err := policiesJSON(req.AccessPolicy, req.ContractPolicy)
	if err != nil {
		return err
	}
	d := &store.Dataset{ID: req.ID, Owner: subject(c), Title: req.Title, Description: req.Description, Engine: string(canon),
		EngineVersion: max(eng.Version, 1), Type: req.Type, PriceCents: req.PriceCents, License: req.License,
		LocationRequired: req.LocationRequired, AccessPolicy: access, ContractPolicy: contract}
	if err := s.Store.CreateDataset(c.Request().Context(), d); err != nil {
		return err
	}
	s.Log.Info("dataset created", "dataset", d.ID, "owner", d.Owner, "type", d.Type)
	c.Response().Header().Set(echo.HeaderLocation, "/api/v1/datasets/"+d.ID)
	return c.JSON(http.StatusCreated, datasetView(d))
}

// ownDataset finds a dataset the caller owns (or any, for an admin).
func (s *Server) ownDataset(c echo.Context) (*store.Dataset, *engine.Engine, error) {
	d, err := s.Store.DatasetByID(c.Request().Context(), c.Param("id"))
	if err != nil {
		return nil, nil, err
	}
	if claims, _ := c.Get(claimsKey).(*auth.Claims); claims == nil || (claims.Role != store.RoleAdmin && d.Owner != claims.Subject) {
		s.Metrics.Reject(metrics.RejectForbidden)
		// Another provider's dataset is not theirs to know about.
		return nil, nil, echo.NewHTTPError(http.StatusNotFound, "dataset "+d.ID+" not found")
	}
	eng, err := parseEngine(d)
	if err != nil {
		return nil, nil, err
	}
	return d, eng, nil
}

type engineT = engine.Engine

func parseEngine(d *store.Dataset) (*engine.Engine, error) {
	eng, err := engine.Parse([]byte(d.Engine))
	if err != nil {
		return nil, fmt.Errorf("dataset %s: stored engine unreadable: %w", d.ID, err)
	}
	return eng, nil
}

func (s *Server) getDataset(c echo.Context) error {
	d, _, err := s.ownDataset(c)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, datasetView(d))
}

// datareadIn is one reading to store: JSON to encode (HTTP ingest), or a
// blob a node's cell already encoded (edge ingest).
type datareadIn struct {
	Time    time.Time       `json:"time"`
	Lat     *float64        `json:"lat"`
	Lon     *float64        `json:"lon"`
	Reading json.RawMessage `json:"reading,omitempty"`
	Blob    []byte          `json:"blob,omitempty"`
}

type rejection struct {
	Index int    `json:"index"`
	Error string `json:"error"`
}

// addDatareads: POST /datasets/{id}/datareads {"datareads": [...]}, up to
// 10,000; each is encoded with the dataset's engine. A reading that does not
// encode, or lacks a position where the dataset requires one, is refused
// and counted; the others are stored.
func (s *Server) addDatareads(c echo.Context) error {
	d, eng, err := s.ownDataset(c)
	if err != nil {
		return err
	}
	return s.ingestDatareads(c, d, eng, true)
}

// ingestDatareads reads a batch {"datareads": [...]} and stores what
// passes: a time, a position (both coordinates or neither, required if
// the dataset says so), and a reading the engine encodes (encode) or a
// blob it decodes. The others are refused with their index and reason,
// and counted on the dataset.
func (s *Server) ingestDatareads(c echo.Context, d *store.Dataset, eng *engine.Engine, encode bool) error {
	var req struct {
		Datareads []datareadIn `json:"datareads"`
	}
	if err := bind(c, &req); err != nil {
		return err
	}
	if len(req.Datareads) == 0 || len(req.Datareads) > maxDatareadBatch {
		return echo.NewHTTPError(http.StatusBadRequest, fmt.Sprintf("datareads: 1 to %d per batch", maxDatareadBatch))
	}
	rows := make([]store.Dataread, 0, len(req.Datareads))
	var rejected []rejection
	for i, r := range req.Datareads {
		why := ""
		switch {
		case r.Time.IsZero():
			why = "time: missing"
		case (r.Lat == nil) != (r.Lon == nil):
			why = "lat and lon: give both or neither"
		case r.Lat != nil && (*r.Lat < -90 || *r.Lat > 90 || *r.Lon < -180 || *r.Lon > 180):
			why = "lat/lon: not a position"
		case d.LocationRequired && r.Lat == nil:
			why = "this dataset requires a location (lat, lon)"
		}
		blob := r.Blob
		if why == "" {
			var err error
			if encode {
				blob, err = eng.Encode(r.Reading)
			} else {
				_, err = eng.Decode(blob)
			}
			if err != nil {
				why = err.Error()
			}
		}
		if why != "" {
			rejected = append(rejected, rejection{Index: i, Error: why})
			continue
		}
		rows = append(rows, store.Dataread{Dataset: d.ID, TimeUS: r.Time.UnixMicro(), Lat: r.Lat, Lon: r.Lon, Blob: blob})
	}
	if err := s.Store.AddDatareads(c.Request().Context(), d.ID, rows, len(rejected)); err != nil {
		return err
	}
	if rejected == nil {
		rejected = []rejection{}
	}
	return c.JSON(http.StatusOK, map[string]any{"accepted": len(rows), "rejected": rejected})
}

// queryDatareads: GET /datasets/{id}/datareads?since=&until=&bbox=minLon,minLat,maxLon,maxLat&after=&limit=&format=json|csv,
// readings decoded, in ingestion order; "next" is the after= of the next page.
func (s *Server) queryDatareads(c echo.Context) error {
	d, eng, contract, err := s.readableDataset(c)
	if err != nil {
		return err
	}
	q := store.DatareadQuery{Dataset: d.ID}
	if q.Limit, err = queryInt(c, "limit", 500, 1, maxDatareadPage); err != nil {
		return err
	}
	for name, dst := range map[string]*int64{"since": &q.SinceUS, "until": &q.UntilUS} {
		if v := c.QueryParam(name); v != "" {
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				return echo.NewHTTPError(http.StatusBadRequest, name+": an RFC 3339 time")
			}
			*dst = t.UnixMicro()
		}
	}
	if v := c.QueryParam("after"); v != "" {
		if q.AfterID, err = strconv.ParseUint(v, 10, 64); err != nil {
			return echo.NewHTTPError(http.StatusBadRequest, "after: the next value of the previous page")
		}
	}
	if v := c.QueryParam("bbox"); v != "" {
		parts := strings.Split(v, ",")
		var b [4]float64
		ok := len(parts) == 4
		for i := 0; ok && i < 4; i++ {
			b[i], err = strconv.ParseFloat(strings.TrimSpace(parts[i]), 64)
			ok = err == nil && b[i] == b[i]
		}
		if !ok || b[0] > b[2] || b[1] > b[3] || b[0] < -180 || b[2] > 180 || b[1] < -90 || b[3] > 90 {
			return echo.NewHTTPError(http.StatusBadRequest, "bbox: minLon,minLat,maxLon,maxLat")
		}
		q.BBox = &b
	}
	format := c.QueryParam("format")
	if format != "" && format != "json" && format != "csv" {
		return echo.NewHTTPError(http.StatusBadRequest, "format: json or csv")
	}
	rows, err := s.Store.Datareads(c.Request().Context(), q)
	if err != nil {
		return err
	}
	next := ""
	if len(rows) == q.Limit {
		next = strconv.FormatUint(rows[len(rows)-1].ID, 10)
	}
	if err := s.Store.Audit(c.Request().Context(), &store.AuditEntry{TimeUS: time.Now().UnixMicro(), User: subject(c), Dataset: d.ID,
		Contract: contract, Query: c.QueryString(), Records: len(rows)}); err != nil {
		return err // no unaudited read
	}
	if format == "csv" {
		return s.datareadsCSV(c, eng, rows, next)
	}
	type out struct {
		ID      uint64          `json:"id"`
		Time    time.Time       `json:"time"`
		Lat     *float64        `json:"lat,omitempty"`
		Lon     *float64        `json:"lon,omitempty"`
		Reading json.RawMessage `json:"reading"`
	}
	res := make([]out, 0, len(rows))
	for _, r := range rows {
		js, err := eng.Decode(r.Blob)
		if err != nil {
			return fmt.Errorf("dataread %d: %w", r.ID, err)
		}
		res = append(res, out{ID: r.ID, Time: time.UnixMicro(r.TimeUS).UTC(), Lat: r.Lat, Lon: r.Lon, Reading: js})
	}
	return c.JSON(http.StatusOK, map[string]any{"datareads": res, "next": next})
}

// datareadsCSV writes a page as CSV: time, lat, lon, then the engine's
// fields; the next page's after= is in the X-Next header.
func (s *Server) datareadsCSV(c echo.Context, eng *engine.Engine, rows []store.Dataread, next string) error {
	c.Response().Header().Set(echo.HeaderContentType, "text/csv; charset=utf-8")
	if next != "" {
		c.Response().Header().Set("X-Next", next)
	}
	c.Response().WriteHeader(http.StatusOK)
	w := csv.NewWriter(c.Response())
	head := []string{"id", "time", "lat", "lon"}
	for _, f := range eng.Fields {
		head = append(head, f.Name)
	}
	w.Write(head)
	for _, r := range rows {
		js, err := eng.Decode(r.Blob)
		if err != nil {
			return err
		}
		var vals map[string]any
		dec := json.NewDecoder(strings.NewReader(string(js)))
		dec.UseNumber()
		if err := dec.Decode(&vals); err != nil {
			return err
		}
		rec := []string{strconv.FormatUint(r.ID, 10), time.UnixMicro(r.TimeUS).UTC().Format(time.RFC3339Nano), "", ""}
		if r.Lat != nil {
			rec[2], rec[3] = strconv.FormatFloat(*r.Lat, 'f', -1, 64), strconv.FormatFloat(*r.Lon, 'f', -1, 64)
		}
		for _, f := range eng.Fields {
			rec = append(rec, fmt.Sprint(vals[f.Name]))
		}
		w.Write(rec)
	}
	w.Flush()
	return w.Error()
}

// addBlobs: POST /datasets/{id}/datareads/blobs (node): engine blobs a
// node's cell encoded at the edge (a transform cell with the dataset's
// engine as its config), {"datareads": [{"time", "lat", "lon", "blob"}]}.
// Only a node running a cell whose spec forwards an output to this dataset
// may post; each blob must decode with the dataset's engine.
func (s *Server) addBlobs(c echo.Context) error {
	ctx := c.Request().Context()
	node, _ := c.Get("node").(string)
	d, err := s.Store.DatasetByID(ctx, c.Param("id"))
	if err != nil {
		return err
	}
	if !s.nodeFeeds(c, node, d.ID) {
		s.Metrics.Reject(metrics.RejectForbidden)
		s.Log.Warn("node refused: no cell of it forwards to the dataset", "node", node, "dataset", d.ID)
		return echo.NewHTTPError(http.StatusForbidden, "node "+node+" runs no cell forwarding to dataset "+d.ID)
	}
	eng, err := parseEngine(d)
	if err != nil {
		return err
	}
	return s.ingestDatareads(c, d, eng, false)
}

// nodeFeeds reports whether node runs a cell forwarding into dataset.
func (s *Server) nodeFeeds(c echo.Context, node, dataset string) bool {
	cells, err := s.Store.ListCells(c.Request().Context(), node)
	if err != nil {
		return false
	}
	for _, cl := range cells {
		var spec protocol.CellSpec
		if json.Unmarshal([]byte(cl.Spec), &spec) != nil {
			continue
		}
		for _, ds := range spec.Datasets {
			if ds == dataset {
				return true
			}
		}
	}
	return false
}

// documentRoute is where a provider uploads a dataset's document (consent,
// license); exempt from the global body limit, bounded by maxDocumentBytes.
const (
	documentRoute    = "/api/v1/datasets/:id/document"
	maxDocumentBytes = 16 << 20
)

func documentKey(dataset string) string { return "datasets/" + dataset + "/document" }

// putDocument: PUT /datasets/{id}/document (owner, admin), the raw file
// (PDF, text…), at most 16 MiB, kept in the object store.
func (s *Server) putDocument(c echo.Context) error {
	d, _, err := s.ownDataset(c)
	if err != nil {
		return err
	}
	if s.Objects == nil {
		return echo.NewHTTPError(http.StatusServiceUnavailable, "no object store")
	}
	if c.Request().ContentLength > maxDocumentBytes {
		return echo.NewHTTPError(http.StatusRequestEntityTooLarge, "the document is larger than 16 MiB")
	}
	body := bufio.NewReader(c.Request().Body)
	if _, err := body.Peek(1); err != nil {
		// Nothing to store: the document in place stays.
		return echo.NewHTTPError(http.StatusBadRequest, "an empty document")
	}
	lr := &io.LimitedReader{R: body, N: maxDocumentBytes + 1}
	n, sum, err := s.Objects.Put(c.Request().Context(), documentKey(d.ID), lr)
	if err != nil {
		return err
	}
	if n > maxDocumentBytes {
		_ = s.Objects.Delete(context.WithoutCancel(c.Request().Context()), documentKey(d.ID))
		return echo.NewHTTPError(http.StatusRequestEntityTooLarge, "the document is larger than 16 MiB")
	}
	s.Log.Info("dataset document stored", "dataset", d.ID, "bytes", n, "by", subject(c))
	return c.JSON(http.StatusOK, map[string]any{"bytes": n, "sha256": sum})
}

// getDocument: the owner, an admin, or a consumer who may see the dataset
// in the catalog (a consumer reads the license before asking for it).
func (s *Server) getDocument(c echo.Context) error {
	ctx := c.Request().Context()
	d, err := s.Store.DatasetByID(ctx, c.Param("id"))
	if err != nil {
		return err
	}
	if role(c) != store.RoleAdmin && d.Owner != subject(c) {
		_, me, err := s.party(c, "")
		if err != nil {
			return err
		}
		access := parsePolicy(d.AccessPolicy)
		if ok, _ := access.Allows(me); !ok {
			return echo.NewHTTPError(http.StatusNotFound, "dataset "+d.ID+" not found")
		}
	}
	if s.Objects == nil {
		return echo.NewHTTPError(http.StatusServiceUnavailable, "no object store")
	}
	rc, err := s.Objects.Get(ctx, documentKey(d.ID))
	if err != nil {
		if errors.Is(err, objects.ErrNotFound) {
			return echo.NewHTTPError(http.StatusNotFound, "dataset "+d.ID+" has no document")
		}
		return err
	}
	defer rc.Close()
	return c.Stream(http.StatusOK, "application/octet-stream", rc)
}
