package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cloudskin/cloudskin/edge-agent/internal/autonomy"
	"github.com/cloudskin/cloudskin/edge-agent/internal/cells"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// Edge autonomy: a green node that cannot reach the console for longer than
// --autonomy-grace decides alone about its low-priority cells. Every
// telemetry sample feeds the node's energy forecast (package autonomy);
// while the battery will not last --autonomy-horizon above its reserve, the
// node pauses one more "low" cell per sample (those whose input waits first:
// deferred before shed); when the forecast rises above 1.5× the horizon it
// resumes the last one paused. Normal and high cells are never the node's to
// touch. When the console is back every paused cell resumes at once and the
// console's desired state rules again. Each step is a node event with the
// forecast it rests on, kept in the durable event outbox until the console
// has it.

const (
	modeDeferred  = "deferred" // the cell's input waits (streams, tissue messages)
	modeShed      = "shed"     // the cell's topic input is lost while it is paused
	resumeEnergy  = "energy"
	resumeConsole = "console"
	// resumeFactor is the hysteresis: a cell paused below the horizon
	// resumes only above this many horizons, so that a forecast hovering
	// at the horizon does not toggle it every sample.
	resumeFactor  = 1.5
	forecastEvery = time.Hour
	persistEvery  = 5 * time.Minute
	autonomyFile  = "autonomy.json"
)

// cellControl is what the autonomy policy needs of the cells: the low
// priority ones, and pausing and resuming one. The cell manager implements
// it; tests fake it.
type cellControl interface {
	lowCells() []lowCell
	pauseCell(id, why string) bool
	resumeCell(id, why string) bool
}

// lowCell is a desired cell of priority low.
type lowCell struct {
	ID   string
	Mode string // modeDeferred or modeShed
}

// pausedCell is a cell the policy paused.
type pausedCell struct {
	ID    string    `json:"cell"`
	Mode  string    `json:"mode"`
	Since time.Time `json:"since"`
}

type autonomyMetrics struct {
	active    prometheus.Gauge
	hoursLeft prometheus.Gauge
	paused    prometheus.Gauge
	sheds     *prometheus.CounterVec
	resumes   *prometheus.CounterVec
}

func newAutonomyMetrics(r prometheus.Registerer) autonomyMetrics {
	m := autonomyMetrics{
		active:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "cloudskin_agent_autonomy_active", Help: "1 while the node, unable to reach the console, manages its low-priority cells itself."}),
		hoursLeft: prometheus.NewGauge(prometheus.GaugeOpts{Name: "cloudskin_agent_autonomy_hours_left", Help: "Hours the battery lasts above its reserve per the node's own forecast (24: the whole forecast window, or no battery)."}),
		paused:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "cloudskin_agent_autonomy_cells_paused", Help: "Low-priority cells paused by edge autonomy."}),
		sheds:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cloudskin_agent_autonomy_cells_shed_total", Help: "Low-priority cells paused by edge autonomy, by mode (deferred: input waits; shed: topic input lost)."}, []string{"mode"}),
		resumes:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cloudskin_agent_autonomy_cells_resumed_total", Help: "Paused cells resumed, by reason (energy, console)."}, []string{"reason"}),
	}
	r.MustRegister(m.active, m.hoursLeft, m.paused, m.sheds, m.resumes)
	return m
}

// autonomyPolicy decides, sample by sample, what a node cut off from the
// console does with its low-priority cells.
type autonomyPolicy struct {
	enabled bool
	grace   time.Duration
	horizon time.Duration
	grid    bool // --power-class grid: never sheds
	fc      *autonomy.Forecaster
	cells   cellControl
	emit    func(protocol.NodeEvent) error
	save    func(autonomy.State) error // nil: not persisted
	log     *slog.Logger
	m       autonomyMetrics

	mu          sync.Mutex
	downSince   time.Time // zero while connected
	active      bool
	activeSince time.Time
	forecastAt  time.Time
	savedAt     time.Time
	last        autonomy.Forecast
	lastAt      time.Time
	paused      []pausedCell // in the order paused
}

// newAutonomyPolicy returns the policy of a node that, as far as it knows,
// has been disconnected since now (it has not connected yet).
func newAutonomyPolicy(cfg Config, st autonomy.State, cells cellControl, emit func(protocol.NodeEvent) error,
	save func(autonomy.State) error, reg prometheus.Registerer, log *slog.Logger, now time.Time) *autonomyPolicy {
	fcfg := autonomy.Config{ReservePct: cfg.AutonomyReservePct, CapacityWh: cfg.AutonomyBatteryWh}
	if lon, err := strconv.ParseFloat(cfg.Lon, 64); err == nil && cfg.Lon != "" {
		fcfg.Longitude = &lon
	}
	p := &autonomyPolicy{enabled: cfg.Autonomy, grace: cfg.AutonomyGrace, horizon: cfg.AutonomyHorizon, grid: cfg.PowerClass == "grid",
		fc: autonomy.New(fcfg, st), cells: cells, emit: emit, save: save, log: log.With("component", "autonomy"),
		m: newAutonomyMetrics(reg), downSince: now, savedAt: now}
	p.m.hoursLeft.Set(capHours(math.Inf(1)))
	return p
}

// observe takes one telemetry sample: it feeds the forecast and, while the
// node is autonomous, sheds or resumes one low-priority cell.
func (p *autonomyPolicy) observe(now time.Time, en protocol.Energy) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fc.Observe(autonomy.ReadingOf(now, en))
	fc := p.fc.Forecast(now)
	p.last, p.lastAt = fc, now
	p.m.hoursLeft.Set(capHours(fc.HoursLeft))
	if p.save != nil && now.Sub(p.savedAt) >= persistEvery {
		p.persistLocked(now)
	}
	if !p.enabled {
		return
	}
	if !p.active {
		offline := !p.downSince.IsZero() && now.Sub(p.downSince) >= p.grace
		if !offline || p.grid || !fc.Battery {
			return
		}
		p.active, p.activeSince, p.forecastAt = true, now, now
		p.m.active.Set(1)
		p.log.Warn("console unreachable: the node manages its low-priority cells itself",
			"offline", now.Sub(p.downSince).Round(time.Second), "hours_left", capHours(fc.HoursLeft), "battery_pct", fc.BatteryPct,
			"solar_w", fc.SolarW, "draw_w", fc.DrawW, "capacity_wh", fc.CapacityWh, "capacity", fc.CapacitySource)
		p.eventLocked(now, protocol.EventAutonomyStart, "", fmt.Sprintf("console unreachable for %s: deciding locally about low-priority cells",
			now.Sub(p.downSince).Round(time.Second)), p.detailLocked(now, fc))
		p.eventLocked(now, protocol.EventAutonomyForecast, "", p.outlook(fc), p.detailLocked(now, fc))
	} else if now.Sub(p.forecastAt) >= forecastEvery {
		p.forecastAt = now
		p.eventLocked(now, protocol.EventAutonomyForecast, "", p.outlook(fc), p.detailLocked(now, fc))
	}
	switch h := fc.HoursLeft; {
	case h < p.horizon.Hours():
		p.shedLocked(now, fc)
	case h > resumeFactor*p.horizon.Hours() && len(p.paused) > 0:
		p.resumeLocked(now, fc, len(p.paused)-1, resumeEnergy)
	}
}

// shedLocked pauses the next low cell: those that lose nothing (deferred)
// before those whose topic input is lost (shed), then by id.
func (p *autonomyPolicy) shedLocked(now time.Time, fc autonomy.Forecast) {
	cands := slices.DeleteFunc(p.cells.lowCells(), func(c lowCell) bool {
		return slices.ContainsFunc(p.paused, func(pc pausedCell) bool { return pc.ID == c.ID })
	})
	if len(cands) == 0 {
		return
	}
	slices.SortFunc(cands, func(a, b lowCell) int {
		if (a.Mode == modeDeferred) != (b.Mode == modeDeferred) {
			if a.Mode == modeDeferred {
				return -1
			}
			return 1
		}
		return strings.Compare(a.ID, b.ID)
	})
	c := cands[0]
	input := "its input waits (deferred)"
	if c.Mode == modeShed {
		input = "its topic input is lost while paused (shed)"
	}
	why := fmt.Sprintf("paused by edge autonomy: %s, short of the %s horizon; %s", p.outlook(fc), hoursText(p.horizon.Hours()), input)
	if !p.cells.pauseCell(c.ID, why) {
		return
	}
	p.paused = append(p.paused, pausedCell{ID: c.ID, Mode: c.Mode, Since: now})
	p.m.sheds.WithLabelValues(c.Mode).Inc()
	p.m.paused.Set(float64(len(p.paused)))
	p.log.Warn("low-priority cell paused", "cell", c.ID, "mode", c.Mode, "hours_left", capHours(fc.HoursLeft),
		"horizon", p.horizon, "battery_pct", fc.BatteryPct, "solar_w", fc.SolarW, "draw_w", fc.DrawW, "capacity_wh", fc.CapacityWh)
	d := p.detailLocked(now, fc)
	d.Mode = c.Mode
	p.eventLocked(now, protocol.EventAutonomyShed, c.ID, why, d)
}

// resumeLocked resumes p.paused[i].
func (p *autonomyPolicy) resumeLocked(now time.Time, fc autonomy.Forecast, i int, reason string) {
	c := p.paused[i]
	p.paused = slices.Delete(p.paused, i, i+1)
	p.m.paused.Set(float64(len(p.paused)))
	msg := fmt.Sprintf("resumed after %s paused: %s, above %s", now.Sub(c.Since).Round(time.Second), p.outlook(fc),
		hoursText(resumeFactor*p.horizon.Hours()))
	if reason == resumeConsole {
		msg = fmt.Sprintf("resumed after %s paused: the console is reachable again and its desired state rules", now.Sub(c.Since).Round(time.Second))
	}
	if !p.cells.resumeCell(c.ID, msg) {
		return // gone from the desired state meanwhile
	}
	p.m.resumes.WithLabelValues(reason).Inc()
	p.log.Info("paused cell resumed", "cell", c.ID, "reason", reason, "paused_for", now.Sub(c.Since).Round(time.Second), "hours_left", capHours(fc.HoursLeft))
	d := p.detailLocked(now, fc)
	d.Reason, d.Mode = reason, c.Mode
	p.eventLocked(now, protocol.EventAutonomyResume, c.ID, msg, d)
}

// connected: the console is reachable again. Every paused cell resumes.
func (p *autonomyPolicy) connected(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	down := p.downSince
	if !p.active {
		p.downSince = time.Time{}
		return
	}
	for len(p.paused) > 0 {
		p.resumeLocked(now, p.last, len(p.paused)-1, resumeConsole)
	}
	d := p.detailLocked(now, p.last)
	d.OfflineSeconds = math.Round(now.Sub(down).Seconds())
	msg := fmt.Sprintf("console reachable again after %s (%s autonomous): its desired state rules again",
		now.Sub(down).Round(time.Second), now.Sub(p.activeSince).Round(time.Second))
	p.active, p.downSince = false, time.Time{}
	p.m.active.Set(0)
	p.log.Info("console reachable again: autonomy ends", "offline", now.Sub(down).Round(time.Second))
	p.eventLocked(now, protocol.EventAutonomyEnd, "", msg, d)
}

// disconnected: the console is unreachable from now on (unless it already was).
func (p *autonomyPolicy) disconnected(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.downSince.IsZero() {
		p.downSince = now
	}
}

// persist writes the forecast's state now (at shutdown).
func (p *autonomyPolicy) persist(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.save != nil {
		p.persistLocked(now)
	}
}

func (p *autonomyPolicy) persistLocked(now time.Time) {
	p.savedAt = now
	if err := p.save(p.fc.State()); err != nil {
		p.log.Warn("energy forecast state not saved", "err", err)
	}
}

func (p *autonomyPolicy) eventLocked(now time.Time, kind, cell, msg string, d protocol.AutonomyDetail) {
	b, _ := json.Marshal(d)
	if len(msg) > protocol.MaxEventMessageBytes {
		msg = strings.ToValidUTF8(msg[:protocol.MaxEventMessageBytes], "")
	}
	if err := p.emit(protocol.NodeEvent{Time: now, Kind: kind, Cell: cell, Message: msg, Detail: b}); err != nil {
		p.log.Error("node event not recorded", "kind", kind, "cell", cell, "err", err)
	}
}

// detailLocked is the forecast as events carry it.
func (p *autonomyPolicy) detailLocked(now time.Time, fc autonomy.Forecast) protocol.AutonomyDetail {
	d := protocol.AutonomyDetail{
		HoursLeft: round2(capHours(fc.HoursLeft)), LastsWindow: math.IsInf(fc.HoursLeft, 1), BatteryPct: round2(fc.BatteryPct),
		SolarW: round2(fc.SolarW), DrawW: round2(fc.DrawW), CapacityWh: round2(fc.CapacityWh), CapacitySource: fc.CapacitySource,
		ReservePct: fc.ReservePct, HorizonHours: round2(p.horizon.Hours()),
	}
	if !p.downSince.IsZero() {
		d.OfflineSeconds = math.Round(now.Sub(p.downSince).Seconds())
	}
	for _, c := range p.paused {
		d.Paused = append(d.Paused, c.ID)
	}
	return d
}

// outlook says the forecast in words.
func (p *autonomyPolicy) outlook(fc autonomy.Forecast) string {
	if math.IsInf(fc.HoursLeft, 1) {
		return fmt.Sprintf("battery at %.0f%% lasts the %s forecast window", fc.BatteryPct, hoursText(autonomy.Window.Hours()))
	}
	return fmt.Sprintf("battery at %.0f%% lasts %s above its %.0f%% reserve (solar %.1f W, draw %.1f W, %s capacity %.0f Wh)",
		fc.BatteryPct, hoursText(fc.HoursLeft), fc.ReservePct, fc.SolarW, fc.DrawW, fc.CapacitySource, fc.CapacityWh)
}

// autonomyView is what GET /api/v1/autonomy on the agent answers.
type autonomyView struct {
	Enabled      bool                     `json:"enabled"`
	Active       bool                     `json:"active"`
	OfflineSince *time.Time               `json:"offline_since,omitempty"`
	Forecast     *protocol.AutonomyDetail `json:"forecast,omitempty"`
	ForecastAt   *time.Time               `json:"forecast_at,omitempty"`
	Paused       []pausedCell             `json:"paused"`
}

func (p *autonomyPolicy) view() autonomyView {
	p.mu.Lock()
	defer p.mu.Unlock()
	v := autonomyView{Enabled: p.enabled, Active: p.active, Paused: slices.Clone(p.paused)}
	if v.Paused == nil {
		v.Paused = []pausedCell{}
	}
	if !p.downSince.IsZero() {
		t := p.downSince.UTC()
		v.OfflineSince = &t
	}
	if !p.lastAt.IsZero() {
		d := p.detailLocked(p.lastAt, p.last)
		t := p.lastAt.UTC()
		v.Forecast, v.ForecastAt = &d, &t
	}
	return v
}

// registerAutonomyAPI serves the node's autonomy state to an operator on
// site (the console may be the very thing that is unreachable).
func (a *Agent) registerAutonomyAPI(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/autonomy", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(a.auto.view())
	})
}

// loadAutonomyState reads the forecast's state the node saved; a missing
// or unreadable file starts afresh.
func loadAutonomyState(dir string, log *slog.Logger) autonomy.State {
	var st autonomy.State
	b, err := os.ReadFile(filepath.Join(dir, autonomyFile))
	if errors.Is(err, fs.ErrNotExist) {
		return st
	}
	if err == nil {
		err = json.Unmarshal(b, &st)
	}
	if err != nil {
		log.Warn("energy forecast state unreadable; learning afresh", "err", err)
		return autonomy.State{}
	}
	return st
}

// capHours caps hours at the forecast window, for metrics and JSON (no Inf).
func capHours(h float64) float64 { return min(h, autonomy.Window.Hours()) }

func round2(v float64) float64 { return math.Round(v*100) / 100 }

func hoursText(h float64) string {
	if h < 1 {
		return fmt.Sprintf("%.0f min", h*60)
	}
	return strconv.FormatFloat(math.Round(h*10)/10, 'f', -1, 64) + " h"
}

// The cell manager's side of autonomy.

// lowCells lists the desired cells of priority low that run or will run,
// and what pausing each costs: a cell with a topic input loses it while paused (shed); one that
// reads only streams (its cursor stays) or tissue messages (their sender
// keeps them until acknowledged) catches up when resumed (deferred).
func (m *cellManager) lowCells() []lowCell {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []lowCell
	for _, rc := range m.cells {
		// A failed cell draws nothing; a held one is the console's, mid-migration.
		if rc.spec.Priority != protocol.PriorityLow || rc.state == protocol.CellFailed || rc.holding != "" {
			continue
		}
		mode := modeDeferred
		if slices.ContainsFunc(rc.spec.Inputs, func(in protocol.Input) bool { return len(in.Topics) > 0 }) {
			mode = modeShed
		}
		out = append(out, lowCell{ID: rc.spec.ID, Mode: mode})
	}
	return out
}

// pauseCell stops feeding a low cell: its worker takes no more batches, its
// stream readers stop (their cursors stay), topic records for it are
// dropped. The instance stays, so resuming is instant.
func (m *cellManager) pauseCell(id, why string) bool {
	m.mu.Lock()
	rc := m.cells[id]
	if rc == nil || rc.spec.Priority != protocol.PriorityLow || rc.holding != "" {
		m.mu.Unlock()
		return false
	}
	m.mu.Unlock()
	rc.readersMu.Lock()
	defer rc.readersMu.Unlock()
	m.mu.Lock()
	rc.paused = why
	rc.addEvent("paused", why)
	m.mu.Unlock()
	m.stopReaders(rc)
	m.a.publishActualSoon()
	return true
}

// resumeCell feeds a paused cell again: what waited in its inbox first,
// its streams from their cursors.
func (m *cellManager) resumeCell(id, why string) bool {
	m.mu.Lock()
	rc := m.cells[id]
	m.mu.Unlock()
	if rc == nil {
		return false
	}
	rc.readersMu.Lock()
	defer rc.readersMu.Unlock()
	m.mu.Lock()
	if rc.paused == "" {
		m.mu.Unlock()
		return false
	}
	rc.paused = ""
	rc.addEvent("resumed", why)
	cell := rc.cell
	start := cell != nil && !rc.stopping && rc.readers == nil
	if rc.signal != nil {
		rc.wakeLocked()
	}
	m.mu.Unlock()
	if start {
		m.startReaders(rc, cell)
	}
	m.a.publishActualSoon()
	return true
}

// startReadersUnlessPaused starts a (re)started cell's stream readers,
// unless autonomy paused it.
func (m *cellManager) startReadersUnlessPaused(rc *runningCell, cell *cells.Cell) {
	rc.readersMu.Lock()
	defer rc.readersMu.Unlock()
	m.mu.Lock()
	paused, current := rc.paused != "", rc.cell == cell && !rc.stopping
	m.mu.Unlock()
	if !paused && current {
		m.startReaders(rc, cell)
	}
}
