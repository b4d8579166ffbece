package api

import (
	"encoding/json"
	"errors"
	"github.com/cloudskin/cloudskin/console/internal/metrics"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/cloudskin/cloudskin/console/internal/rpc"
	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// Streams live on the nodes; the console shows the figures each node reports
// with its actual state, and reads records from wherever they are: the cloud
// tier (spilled segments) for offsets below what the node still holds, the
// node itself (a request over MQTT) for the rest.

func (s *Server) registerStreams(v1 *echo.Group) {
	v1.GET("/nodes/:name/streams", s.listStreams, s.userAuth, s.requireRole(fleetRoles...))
	v1.GET("/nodes/:name/streams/:stream", s.getStream, s.userAuth, s.requireRole(fleetRoles...))
	v1.GET("/nodes/:name/streams/:stream/records", s.streamRecords, s.userOrNodeAuth(segmentReadRoles...))
	v1.PUT("/nodes/:name/streams/:stream", s.putStream, s.userAuth, s.requireRole(cellWriteRoles...))
	v1.DELETE("/nodes/:name/streams/:stream", s.deleteStream, s.userAuth, s.requireRole(cellWriteRoles...))
}

// putStream declares a stream on a node (body: protocol.StreamSpec; its
// name, if given, must match the path) and publishes the node's desired state.
func (s *Server) putStream(c echo.Context) error {
	var spec protocol.StreamSpec
	if err := bind(c, &spec); err != nil {
		return err
	}
	name := c.Param("stream")
	if spec.Name != "" && spec.Name != name {
		return echo.NewHTTPError(http.StatusBadRequest, "body names stream "+strconv.Quote(spec.Name)+", path "+strconv.Quote(name))
	}
	spec.Name = name
	if err := s.Cells.PutStream(c.Request().Context(), c.Param("name"), spec, subject(c)); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, spec)
}

func (s *Server) deleteStream(c echo.Context) error {
	if err := s.Cells.DeleteStream(c.Request().Context(), c.Param("name"), c.Param("stream")); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

// streamView is a stream's reported figures with when they were reported.
type streamView struct {
	protocol.StreamStatus
	ReportedAt time.Time `json:"reported_at"`
}

func viewStream(row store.NodeStream) (streamView, error) {
	var v streamView
	if err := json.Unmarshal([]byte(row.StatusJSON), &v.StreamStatus); err != nil {
		return v, err
	}
	v.ReportedAt = time.UnixMicro(row.StatusUS).UTC()
	return v, nil
}

func (s *Server) listStreams(c echo.Context) error {
	ctx := c.Request().Context()
	node := c.Param("name")
	if _, err := s.Fleet.Node(ctx, node); err != nil {
		return err
	}
	rows, err := s.Store.NodeStreams(ctx, node)
	if err != nil {
		return err
	}
	out := make([]streamView, 0, len(rows))
	for _, r := range rows {
		v, err := viewStream(r)
		if err != nil {
			return err
		}
		out = append(out, v)
	}
	return c.JSON(http.StatusOK, map[string]any{"streams": out})
}

func (s *Server) getStream(c echo.Context) error {
	ctx := c.Request().Context()
	node, name := c.Param("name"), c.Param("stream")
	if err := protocol.ValidateStreamName(name); err != nil {
		return echo.NewHTTPError(http.StatusBadRequest, err.Error())
	}
	row, err := s.Store.NodeStreamByName(ctx, node, name)
	if errors.Is(err, store.ErrNotFound) {
		return echo.NewHTTPError(http.StatusNotFound, "node "+node+" reports no stream "+name)
	}
	if err != nil {
		return err
	}
	v, err := viewStream(row)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, v)
}

// streamRecords: ?from=OFFSET or ?since=RFC3339 time, &limit=1..1000 (100).
// The answer says where each record came from ("node" or "cloud") and the
// offset to continue from.
func (s *Server) streamRecords(c echo.Context) error {
	ctx := c.Request().Context()
	node, name := c.Param("name"), c.Param("stream")
	if err := protocol.ValidateStreamName(name); err != nil {
		return echo.NewHTTPError(http.StatusBadRequest, err.Error())
	}
	if _, err := s.Fleet.Node(ctx, node); err != nil {
		return err
	}
	if reader, ok := c.Get("node").(string); ok {
		if err := s.mayReadRemote(c, reader, node, name); err != nil {
			return err
		}
	}
	q := c.QueryParams()
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return echo.NewHTTPError(http.StatusBadRequest, "limit: a number from 1 to 1000")
		}
		limit = n
	}
	var from uint64
	if v := q.Get("from"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return echo.NewHTTPError(http.StatusBadRequest, "from: a record offset (unsigned integer)")
		}
		from = n
	}
	if v := q.Get("since"); v != "" {
		if q.Get("from") != "" {
			return echo.NewHTTPError(http.StatusBadRequest, "use from or since, not both")
		}
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return echo.NewHTTPError(http.StatusBadRequest, "since: an RFC 3339 time")
		}
		off, err := s.offsetAt(c, node, name, t)
		if err != nil {
			var he *echo.HTTPError
			if errors.As(err, &he) {
				return err
			}
			return s.tierError(c, err)
		}
		from = off
	}

	// The cloud tier first: it holds the oldest records and needs no node.
	var recs []protocol.StreamRecord
	source := "cloud"
	next := from
	if s.Tier != nil {
		r, n, err := s.Tier.ReadRecords(ctx, node, name, from, limit)
		if err != nil {
			return s.tierError(c, err)
		}
		recs, next = r, n
	}
	if len(recs) == 0 {
		source = "node"
		reply, err := s.RPC.Call(ctx, node, protocol.Request{Method: protocol.MethodStreamRecords, Stream: name, From: from, Limit: limit})
		if err != nil {
			if errors.Is(err, rpc.ErrTimeout) {
				return echo.NewHTTPError(http.StatusGatewayTimeout, "node "+node+" did not answer; records not yet spilled to the cloud tier are readable only while it is online")
			}
			return err
		}
		if reply.Error != "" {
			code := reply.Code
			if code < 400 || code > 599 {
				code = http.StatusBadGateway
			}
			return echo.NewHTTPError(code, "node "+node+": "+reply.Error)
		}
		recs, next = reply.Records, reply.Next
		if len(recs) == 0 {
			next = from
		}
	}
	if recs == nil {
		recs = []protocol.StreamRecord{}
	}
	return c.JSON(http.StatusOK, map[string]any{"records": recs, "next": next, "source": source})
}

// offsetAt finds the first offset at or after t: in the cloud tier if a
// spilled segment reaches t, else on the node.
func (s *Server) offsetAt(c echo.Context, node, name string, t time.Time) (uint64, error) {
	ctx := c.Request().Context()
	if s.Tier != nil {
		off, ok, err := s.Tier.OffsetAt(ctx, node, name, t)
		if err != nil {
			return 0, err // a tier error: the caller answers it
		}
		if ok {
			return off, nil
		}
	}
	reply, err := s.RPC.Call(ctx, node, protocol.Request{Method: protocol.MethodStreamOffsetAt, Stream: name, Time: t})
	if err != nil {
		if errors.Is(err, rpc.ErrTimeout) {
			return 0, echo.NewHTTPError(http.StatusGatewayTimeout, "node "+node+" did not answer")
		}
		return 0, err
	}
	if reply.Error != "" {
		return 0, echo.NewHTTPError(http.StatusNotFound, "node "+node+": "+reply.Error)
	}
	return reply.Offset, nil
}

// mayReadRemote lets a node read another node's stream only for a cell it
// runs whose input names that stream on that node (a cell that migrated
// keeps reading its old node's stream).
func (s *Server) mayReadRemote(c echo.Context, reader, node, stream string) error {
	cells, err := s.Store.ListCells(c.Request().Context(), reader)
	if err != nil {
		return err
	}
	for _, cl := range cells {
		var spec protocol.CellSpec
		if json.Unmarshal([]byte(cl.Spec), &spec) != nil {
			continue
		}
		for _, in := range spec.Inputs {
			if in.Stream == stream && in.Node == node {
				return nil
			}
		}
	}
	s.Metrics.Reject(metrics.RejectForbidden)
	s.Log.Warn("node refused another node's stream", "node", reader, "stream_node", node, "stream", stream)
	return echo.NewHTTPError(http.StatusForbidden, "node "+reader+" runs no cell reading stream "+stream+" of node "+node)
}
