package ui

import (
	"encoding/json"
	"fmt"
	"html/template"
	"math"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/cloudskin/cloudskin/console/internal/cells"
	"github.com/cloudskin/cloudskin/console/internal/fleet"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

type fleetData struct {
	Nodes   []nodeRow
	Map     siteMap
	Online  int
	Offline int
	Green   int
	Grid    int
}

// nodeRow is one node as the overview shows it.
type nodeRow struct {
	fleet.NodeView
	Power      string
	Battery    *float64
	PowerW     *float64
	CPU        *float64
	HasLatLon  bool
	Lat, Lon   float64
	LastSeenAt string
}

func rowOf(n fleet.NodeView) nodeRow {
	r := nodeRow{NodeView: n, Power: n.Labels["power"]}
	if r.Power == "" {
		r.Power = "grid"
	}
	if t := n.LastTelemetry; t != nil {
		r.Battery = t.Energy.BatteryPct
		w, c := t.Energy.PowerW, t.CPU.Percent
		r.PowerW, r.CPU = &w, &c
	}
	lat, err1 := strconv.ParseFloat(n.Labels["lat"], 64)
	lon, err2 := strconv.ParseFloat(n.Labels["lon"], 64)
	if err1 == nil && err2 == nil && math.Abs(lat) <= 90 && math.Abs(lon) <= 180 {
		r.HasLatLon, r.Lat, r.Lon = true, lat, lon
	}
	if n.LastSeen != nil {
		r.LastSeenAt = ago(*n.LastSeen)
	}
	return r
}

func (u *UI) fleetPage(c echo.Context) error {
	var resp struct {
		Nodes []fleet.NodeView `json:"nodes"`
	}
	if err := u.call(c.Request().Context(), sess(c).Token, http.MethodGet, "/api/v1/nodes", nil, &resp); err != nil {
		return err
	}
	d := fleetData{Nodes: make([]nodeRow, 0, len(resp.Nodes))}
	for _, n := range resp.Nodes {
		r := rowOf(n)
		if n.Status == "online" {
			d.Online++
		} else {
			d.Offline++
		}
		if r.Power == "green" {
			d.Green++
		} else {
			d.Grid++
		}
		d.Nodes = append(d.Nodes, r)
	}
	d.Map = layoutMap(d.Nodes, 960, 380)
	return u.render(c, http.StatusOK, "fleet", "Fleet", d)
}

// siteMap is the overview's schematic: nodes placed by their lat/lon
// labels in an SVG viewport (equirectangular, scaled to the fleet's
// bounding box; no map tiles).
type siteMap struct {
	W, H     float64
	Points   []mapPoint
	Unplaced int
	// The box's corners, for the legend.
	MinLat, MaxLat, MinLon, MaxLon float64
}

type mapPoint struct {
	Name, Status, Power string
	X, Y                float64
	// BatteryW is the battery bar's filled width (of 18 px); -1 without a battery.
	BatteryW float64
	Battery  string
}

// layoutMap projects nodes into a w×h viewport with a margin. Nodes at
// the same spot are spread on a small circle so each stays visible.
func layoutMap(nodes []nodeRow, w, h float64) siteMap {
	m := siteMap{W: w, H: h, MinLat: 90, MaxLat: -90, MinLon: 180, MaxLon: -180}
	placed := 0
	for _, n := range nodes {
		if !n.HasLatLon {
			m.Unplaced++
			continue
		}
		placed++
		m.MinLat, m.MaxLat = math.Min(m.MinLat, n.Lat), math.Max(m.MaxLat, n.Lat)
		m.MinLon, m.MaxLon = math.Min(m.MinLon, n.Lon), math.Max(m.MaxLon, n.Lon)
	}
	if placed == 0 {
		return m
	}
	// A longitude degree is cos(lat) as long as a latitude degree.
	k := math.Cos((m.MinLat + m.MaxLat) / 2 * math.Pi / 180)
	spanX := math.Max((m.MaxLon-m.MinLon)*k, 0.002)
	spanY := math.Max(m.MaxLat-m.MinLat, 0.002)
	const margin = 28.0
	scale := math.Min((w-2*margin)/spanX, (h-2*margin)/spanY)
	// Centre the box in the viewport.
	offX := (w - spanX*scale) / 2
	offY := (h - spanY*scale) / 2
	midLon, midLat := (m.MinLon+m.MaxLon)/2, (m.MinLat+m.MaxLat)/2
	type key struct{ x, y int }
	at := map[key][]int{}
	for _, n := range nodes {
		if !n.HasLatLon {
			continue
		}
		x := offX + ((n.Lon-midLon)*k+spanX/2)*scale
		y := offY + (spanY/2-(n.Lat-midLat))*scale
		p := mapPoint{Name: n.Name, Status: n.Status, Power: n.Power, X: x, Y: y, BatteryW: -1}
		if n.Battery != nil {
			b := math.Max(0, math.Min(100, *n.Battery))
			p.BatteryW, p.Battery = b*18/100, fmt.Sprintf("battery %.0f%%", b)
		}
		kk := key{int(x / 6), int(y / 6)}
		at[kk] = append(at[kk], len(m.Points))
		m.Points = append(m.Points, p)
	}
	for _, idx := range at {
		if len(idx) < 2 {
			continue
		}
		r := math.Min(8+2*float64(len(idx)), 60)
		for i, j := range idx {
			a := 2 * math.Pi * float64(i) / float64(len(idx))
			m.Points[j].X += r * math.Cos(a)
			m.Points[j].Y += r * math.Sin(a)
		}
	}
	for i := range m.Points { // keep every mark inside the viewport
		m.Points[i].X = math.Round(math.Max(10, math.Min(w-24, m.Points[i].X))*10) / 10
		m.Points[i].Y = math.Round(math.Max(10, math.Min(h-14, m.Points[i].Y))*10) / 10
	}
	return m
}

type nodeData struct {
	Node    nodeRow
	Series  template.JS
	Cells   []cells.Cell
	Streams []streamRow
	Events  []protocol.NodeEvent
	Err     string
}

type streamRow struct {
	protocol.StreamStatus
	ReportedAt *time.Time `json:"reported_at"`
}

func (u *UI) nodePage(c echo.Context) error {
	ctx, tok, name := c.Request().Context(), sess(c).Token, c.Param("name")
	var n fleet.NodeView
	if err := u.call(ctx, tok, http.MethodGet, "/api/v1/nodes/"+url.PathEscape(name), nil, &n); err != nil {
		return err
	}
	d := nodeData{Node: rowOf(n)}
	var tel struct {
		Samples []protocol.Telemetry `json:"samples"`
	}
	if err := u.call(ctx, tok, http.MethodGet, "/api/v1/nodes/"+url.PathEscape(name)+"/telemetry?since=15m&limit=2000", nil, &tel); err != nil {
		return err
	}
	d.Series = seriesJSON(tel.Samples)
	var err error
	if d.Cells, d.Streams, err = u.nodeParts(c, name); err != nil {
		return err
	}
	var ev struct {
		Events []protocol.NodeEvent `json:"events"`
	}
	if err := u.call(ctx, tok, http.MethodGet, "/api/v1/nodes/"+url.PathEscape(name)+"/events?limit=10", nil, &ev); err != nil {
		d.Err = errorText(err)
	}
	d.Events = ev.Events
	return u.render(c, http.StatusOK, "node", "Node "+name, d)
}

func (u *UI) nodeParts(c echo.Context, name string) ([]cells.Cell, []streamRow, error) {
	ctx, tok := c.Request().Context(), sess(c).Token
	var cs struct {
		Cells []cells.Cell `json:"cells"`
	}
	if err := u.call(ctx, tok, http.MethodGet, "/api/v1/cells?node="+url.QueryEscape(name), nil, &cs); err != nil {
		return nil, nil, err
	}
	var ss struct {
		Streams []streamRow `json:"streams"`
	}
	if err := u.call(ctx, tok, http.MethodGet, "/api/v1/nodes/"+url.PathEscape(name)+"/streams", nil, &ss); err != nil {
		return nil, nil, err
	}
	return cs.Cells, ss.Streams, nil
}

// nodeCells is the node page's cells and streams, refreshed by htmx.
func (u *UI) nodeCells(c echo.Context) error {
	name := c.Param("name")
	cs, ss, err := u.nodeParts(c, name)
	if err != nil {
		return err
	}
	return u.fragment(c, http.StatusOK, "node-parts", nodeData{Node: nodeRow{NodeView: fleet.NodeView{Name: name}}, Cells: cs, Streams: ss})
}

// point is one telemetry sample as the charts plot it.
type point struct {
	T       float64  `json:"t"` // Unix seconds
	CPU     float64  `json:"cpu"`
	Mem     float64  `json:"mem"`
	PowerW  float64  `json:"power"`
	Battery *float64 `json:"battery"`
	Solar   *float64 `json:"solar"`
	Rx      float64  `json:"rx"`
	Tx      float64  `json:"tx"`
}

func pointOf(t protocol.Telemetry) point {
	return point{T: float64(t.Time.UnixMicro()) / 1e6, CPU: t.CPU.Percent, Mem: t.Memory.Percent, PowerW: t.Energy.PowerW,
		Battery: t.Energy.BatteryPct, Solar: t.Energy.SolarW, Rx: t.Network.RxBytesPerS, Tx: t.Network.TxBytesPerS}
}

func seriesJSON(samples []protocol.Telemetry) template.JS {
	pts := make([]point, 0, len(samples))
	for _, s := range samples {
		pts = append(pts, pointOf(s))
	}
	b, _ := json.Marshal(pts)
	return template.JS(b)
}

// livePoll is how often a node page's stream asks the store for samples.
var livePoll = 2 * time.Second

// nodeLive streams a node's new telemetry samples as server-sent events
// ("sample", one JSON point each), polling the API every livePoll.
func (u *UI) nodeLive(c echo.Context) error {
	ctx, cancel := u.stopping(c.Request().Context())
	defer cancel()
	tok, name := sess(c).Token, c.Param("name")
	since := time.Now().Add(-5 * time.Second)
	if s := c.QueryParam("since"); s != "" {
		if f, err := strconv.ParseFloat(s, 64); err == nil {
			since = time.UnixMicro(int64(f * 1e6))
		}
	}
	w := c.Response()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, "retry: 3000\n\n")
	w.Flush()
	tick := time.NewTicker(livePoll)
	defer tick.Stop()
	for {
		var tel struct {
			Samples []protocol.Telemetry `json:"samples"`
		}
		q := "/api/v1/nodes/" + url.PathEscape(name) + "/telemetry?limit=500&since=" + url.QueryEscape(since.Add(time.Microsecond).UTC().Format(time.RFC3339Nano))
		if err := u.call(ctx, tok, http.MethodGet, q, nil, &tel); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			fmt.Fprintf(w, "event: failure\ndata: %s\n\n", jsonString(errorText(err)))
			w.Flush()
			if statusOf(err) == http.StatusUnauthorized || statusOf(err) == http.StatusForbidden {
				return nil
			}
		}
		sort.Slice(tel.Samples, func(i, j int) bool { return tel.Samples[i].Time.Before(tel.Samples[j].Time) })
		for _, s := range tel.Samples {
			b, _ := json.Marshal(pointOf(s))
			fmt.Fprintf(w, "event: sample\ndata: %s\n\n", b)
			since = s.Time
		}
		if len(tel.Samples) == 0 {
			fmt.Fprint(w, ": idle\n\n") // keeps proxies from closing the stream
		}
		w.Flush()
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func ago(t time.Time) string {
	d := time.Since(t)
	switch {
	case d < 0:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return t.UTC().Format("2006-01-02")
}
