package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// CellSample is one observation of a cell on a node, taken from the node's
// actual state: what the learning plane trains its performance model on.
// RatePerS is the records per second the cell handled since the previous
// sample of the same cell on the same node (0 for the first).
type CellSample struct {
	ID           uint64  `gorm:"primaryKey"`
	Cell         string  `gorm:"size:63;not null;index:idx_cell_samples_cell_time,priority:1"`
	App          string  `gorm:"size:63"`
	Module       string  `gorm:"size:64;not null"`
	Node         string  `gorm:"size:63;not null"`
	TimeUS       int64   `gorm:"not null;index:idx_cell_samples_cell_time,priority:2;index"`
	Records      uint64  `gorm:"not null"`
	RatePerS     float64 `gorm:"not null"`
	LatencyP99US float64 `gorm:"not null"`
	LatencyP50US float64 `gorm:"not null"`
	MemoryBytes  int64   `gorm:"not null"`
	CPU          float64 `gorm:"not null"` // cores the cell's spec requests
}

// InsertCellSamples stores observations.
func (s *Store) InsertCellSamples(ctx context.Context, rows []CellSample) error {
	if len(rows) == 0 {
		return nil
	}
	return s.db.WithContext(ctx).CreateInBatches(rows, 200).Error
}

// CellSamples returns the observations with sinceUS <= time < untilUS,
// oldest first, at most limit.
func (s *Store) CellSamples(ctx context.Context, sinceUS, untilUS int64, limit int) ([]CellSample, error) {
	var out []CellSample
	err := s.db.WithContext(ctx).Where("time_us >= ? AND time_us < ?", sinceUS, untilUS).
		Order("time_us").Limit(limit).Find(&out).Error
	return out, err
}

// DeleteCellSamplesBefore applies retention; it returns how many rows went.
func (s *Store) DeleteCellSamplesBefore(ctx context.Context, beforeUS int64) (int64, error) {
	res := s.db.WithContext(ctx).Where("time_us < ?", beforeUS).Delete(&CellSample{})
	return res.RowsAffected, res.Error
}

// FleetSamples returns every node's telemetry samples with sinceUS <= time
// < untilUS, by node then time, at most limit, without their payloads unless
// withPayload.
func (s *Store) FleetSamples(ctx context.Context, sinceUS, untilUS int64, limit int, withPayload bool) ([]Sample, error) {
	var out []Sample
	q := s.db.WithContext(ctx).Where("time_us >= ? AND time_us < ?", sinceUS, untilUS)
	if !withPayload {
		q = q.Omit("payload")
	}
	err := q.Order("node_id, time_us").Limit(limit).Find(&out).Error
	return out, err
}

// NodeEvent is something a node did on its own and reported on its events
// topic, such as shedding a cell while it could not reach the console. A node
// names each event (EventID) so a redelivery is stored once.
type NodeEvent struct {
	ID         uint64 `gorm:"primaryKey" json:"-"`
	Node       string `gorm:"size:63;not null;uniqueIndex:idx_node_events_node_event,priority:1" json:"node"`
	EventID    string `gorm:"size:80;not null;uniqueIndex:idx_node_events_node_event,priority:2" json:"id"`
	TimeUS     int64  `gorm:"not null;index" json:"-"`
	Kind       string `gorm:"size:48;not null" json:"kind"`
	Cell       string `gorm:"size:63" json:"cell,omitempty"`
	Message    string `gorm:"type:text" json:"message"`
	Detail     string `gorm:"type:text" json:"-"` // JSON object
	ReceivedUS int64  `gorm:"not null" json:"-"`
}

// InsertNodeEvents stores events once each; it returns how many were new.
func (s *Store) InsertNodeEvents(ctx context.Context, evs []NodeEvent) (int64, error) {
	if len(evs) == 0 {
		return 0, nil
	}
	res := s.db.WithContext(ctx).Clauses(clause.OnConflict{DoNothing: true}).Create(&evs)
	return res.RowsAffected, res.Error
}

// NodeEvents returns a node's newest events first, at most limit.
func (s *Store) NodeEvents(ctx context.Context, node string, limit int) ([]NodeEvent, error) {
	var out []NodeEvent
	err := s.db.WithContext(ctx).Where("node = ?", node).Order("time_us DESC, id DESC").Limit(limit).Find(&out).Error
	return out, err
}

// Model statuses in the registry.
const (
	ModelReady    = "ready"     // beat its baseline on held-out data; may be served
	ModelNotReady = "not-ready" // trained, but did not beat its baseline (Reason says why)
	ModelFailed   = "failed"    // could not train (too little data, bad series)
)

// LearningModel is one trained version of a model in the registry. Kind
// names what it predicts, Subject what it is about ("fleet" or a node), and
// Version counts up per (Kind, Subject). At most one version per (Kind,
// Subject) is Active: the one the learning plane serves.
type LearningModel struct {
	ID         uint64     `gorm:"primaryKey" json:"id"`
	Kind       string     `gorm:"size:48;not null;uniqueIndex:idx_models_kind_subject_version,priority:1" json:"kind"`
	Subject    string     `gorm:"size:63;not null;uniqueIndex:idx_models_kind_subject_version,priority:2" json:"subject"`
	Version    int        `gorm:"not null;uniqueIndex:idx_models_kind_subject_version,priority:3" json:"version"`
	Status     string     `gorm:"size:16;not null" json:"status"`
	Active     bool       `gorm:"not null;index" json:"active"`
	Reason     string     `gorm:"type:text" json:"reason"`
	Trigger    string     `gorm:"size:16" json:"trigger"` // "schedule" | "manual"
	TrainFrom  time.Time  `json:"train_from"`
	TrainTo    time.Time  `json:"train_to"`
	Rows       int        `gorm:"not null" json:"rows"`
	Features   string     `gorm:"type:text" json:"-"` // JSON array
	Metrics    string     `gorm:"type:text" json:"-"` // JSON: the model's and its baselines' held-out metrics
	Params     string     `gorm:"type:text" json:"-"` // JSON: the model itself
	CreatedAt  time.Time  `json:"created_at"`
	PromotedAt *time.Time `json:"promoted_at,omitempty"`
}

// ErrNotReady is returned when promoting a model that is not ready.
var ErrNotReady = errors.New("model is not ready")

// AddModel stores a new version of m.Kind/m.Subject (its Version is set
// here). A ready model becomes the active one when activate is true.
func (s *Store) AddModel(ctx context.Context, m *LearningModel, activate bool) error {
	return s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		var last LearningModel
		err := tx.Where("kind = ? AND subject = ?", m.Kind, m.Subject).Order("version DESC").Limit(1).Find(&last).Error
		if err != nil {
			return err
		}
		m.Version = last.Version + 1
		m.Active = false
		if err := tx.Create(m).Error; err != nil {
			return err
		}
		if activate && m.Status == ModelReady {
			return activateModel(tx, m)
		}
		return nil
	})
}

func activateModel(tx *gorm.DB, m *LearningModel) error {
	now := time.Now().UTC()
	if err := tx.Model(&LearningModel{}).Where("kind = ? AND subject = ? AND active", m.Kind, m.Subject).
		Update("active", false).Error; err != nil {
		return err
	}
	m.Active, m.PromotedAt = true, &now
	return tx.Model(&LearningModel{}).Where("id = ?", m.ID).
		Updates(map[string]any{"active": true, "promoted_at": now}).Error
}

// PromoteModel makes the version with id the served one of its kind and
// subject. Only a ready model may be promoted.
func (s *Store) PromoteModel(ctx context.Context, id uint64) (*LearningModel, error) {
	var m LearningModel
	err := s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := tx.First(&m, id).Error; err != nil {
			if errors.Is(err, gorm.ErrRecordNotFound) {
				return ErrNotFound
			}
			return err
		}
		if m.Status != ModelReady {
			return fmt.Errorf("%w: version %d of %s/%s is %s: %s", ErrNotReady, m.Version, m.Kind, m.Subject, m.Status, m.Reason)
		}
		return activateModel(tx, &m)
	})
	if err != nil {
		return nil, err
	}
	return &m, nil
}

// RollbackModel serves the newest ready version of the kind and subject
// older than the active one, and returns it. ErrNotFound: nothing to roll
// back to.
func (s *Store) RollbackModel(ctx context.Context, kind, subject string) (*LearningModel, error) {
	var m LearningModel
	err := s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		var cur LearningModel
		if err := tx.Where("kind = ? AND subject = ? AND active", kind, subject).Limit(1).Find(&cur).Error; err != nil {
			return err
		}
		if cur.ID == 0 {
			return fmt.Errorf("%w: no active version of %s/%s", ErrNotFound, kind, subject)
		}
		err := tx.Where("kind = ? AND subject = ? AND status = ? AND version < ?", kind, subject, ModelReady, cur.Version).
			Order("version DESC").Limit(1).Find(&m).Error
		if err != nil {
			return err
		}
		if m.ID == 0 {
			return fmt.Errorf("%w: no ready version of %s/%s older than %d", ErrNotFound, kind, subject, cur.Version)
		}
		return activateModel(tx, &m)
	})
	if err != nil {
		return nil, err
	}
	return &m, nil
}

// ModelQuery filters ListModels; empty fields match all.
type ModelQuery struct {
	Kind, Subject string
	ActiveOnly    bool
	Limit         int
}

// ListModels returns models newest first, with their metrics and features
// but without their parameters.
func (s *Store) ListModels(ctx context.Context, q ModelQuery) ([]LearningModel, error) {
	db := s.db.WithContext(ctx).Omit("params")
	if q.Kind != "" {
		db = db.Where("kind = ?", q.Kind)
	}
	if q.Subject != "" {
		db = db.Where("subject = ?", q.Subject)
	}
	if q.ActiveOnly {
		db = db.Where("active")
	}
	if q.Limit <= 0 || q.Limit > 1000 {
		q.Limit = 1000
	}
	var out []LearningModel
	err := db.Order("created_at DESC, id DESC").Limit(q.Limit).Find(&out).Error
	return out, err
}

// ActiveModels returns every served model with its parameters.
func (s *Store) ActiveModels(ctx context.Context) ([]LearningModel, error) {
	var out []LearningModel
	err := s.db.WithContext(ctx).Where("active").Find(&out).Error
	return out, err
}

// ModelByID returns one model with its parameters.
func (s *Store) ModelByID(ctx context.Context, id uint64) (*LearningModel, error) {
	var m LearningModel
	if err := s.db.WithContext(ctx).First(&m, id).Error; err != nil {
		if errors.Is(err, gorm.ErrRecordNotFound) {
			return nil, ErrNotFound
		}
		return nil, err
	}
	return &m, nil
}

// Bucket is one node's telemetry averaged over one step: the series the
// learning plane forecasts. A field is nil when no sample in the bucket had
// it.
type Bucket struct {
	NodeID     uint
	Bucket     int64 // time_us / step_us
	CPUPercent float64
	PowerW     float64
	BatteryPct *float64
	SolarW     *float64
	Samples    int64
}

// FleetBuckets averages every node's samples with sinceUS <= time < untilUS
// over steps of stepUS, by node then time: the database does the reduction,
// so a fortnight of ten-second samples is not read row by row.
func (s *Store) FleetBuckets(ctx context.Context, sinceUS, untilUS, stepUS int64) ([]Bucket, error) {
	if stepUS <= 0 {
		return nil, fmt.Errorf("bucket step %d µs must be positive", stepUS)
	}
	var out []Bucket
	err := s.db.WithContext(ctx).Raw("SELECT node_id, time_us / ? AS bucket, AVG(cpu_percent) AS cpu_percent, "+
		"AVG(power_w) AS power_w, AVG(battery_pct) AS battery_pct, AVG(solar_w) AS solar_w, COUNT(*) AS samples "+
		"FROM telemetry_samples WHERE time_us >= ? AND time_us < ? GROUP BY node_id, bucket ORDER BY node_id, bucket",
		stepUS, sinceUS, untilUS).Scan(&out).Error
	return out, err
}

// PruneModels deletes versions older than the newest keep of each kind and
// subject, never the served one.
func (s *Store) PruneModels(ctx context.Context, keep int) error {
	return s.db.WithContext(ctx).Exec("DELETE FROM learning_models WHERE NOT active AND version <= "+
		"(SELECT MAX(x.version) FROM learning_models x WHERE x.kind = learning_models.kind AND x.subject = learning_models.subject) - ?",
		keep).Error
}

// LatestModels returns the newest version of kind for every subject, with
// its parameters, whatever its status.
func (s *Store) LatestModels(ctx context.Context, kind string) ([]LearningModel, error) {
	var out []LearningModel
	err := s.db.WithContext(ctx).Where("kind = ? AND version = (SELECT MAX(x.version) FROM learning_models x "+
		"WHERE x.kind = learning_models.kind AND x.subject = learning_models.subject)", kind).Find(&out).Error
	return out, err
}
