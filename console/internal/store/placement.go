package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// App is an operator's declaration of cells the Planner places: Spec is the
// app spec as JSON (the placement package owns its shape).
type App struct {
	Name      string `gorm:"primaryKey;size:63"`
	Spec      string `gorm:"type:text;not null"`
	CreatedBy string `gorm:"size:64"`
	CreatedAt time.Time
	UpdatedAt time.Time
}

// Checkpoint is a cell checkpoint a node uploaded to the object store under
// Key. Seq grows along the cell's lineage, across the nodes it ran on.
type Checkpoint struct {
	ID        string    `gorm:"primaryKey;size:80" json:"id"`
	Cell      string    `gorm:"size:63;not null;index:idx_checkpoint_cell_seq,priority:1" json:"cell"`
	Seq       uint64    `gorm:"not null;index:idx_checkpoint_cell_seq,priority:2" json:"seq"`
	Node      string    `gorm:"size:63;not null" json:"node"`
	Reason    string    `gorm:"size:16;not null" json:"reason"`
	Bytes     int64     `gorm:"not null" json:"bytes"`
	SHA256    string    `gorm:"size:64;not null" json:"sha256"`
	Key       string    `gorm:"size:512;not null" json:"-"`
	CreatedAt time.Time `json:"created_at"`
}

// Move is one migration of a cell between nodes, driven through desired
// states: Phase hold (the source checkpoints and holds the cell), restore
// (the target restores it; the source still holds its copy), then done,
// aborted or failed. Exactly one move per cell is open (Open true) at a time.
type Move struct {
	ID         string     `gorm:"primaryKey;size:80" json:"id"`
	Cell       string     `gorm:"size:63;not null;index" json:"cell"`
	From       string     `gorm:"column:from_node;size:63;not null" json:"from"`
	To         string     `gorm:"column:to_node;size:63;not null" json:"to"`
	Reason     string     `gorm:"size:32;not null" json:"reason"`
	Phase      string     `gorm:"size:16;not null" json:"phase"`
	Open       bool       `gorm:"not null;index" json:"open"`
	Checkpoint string     `gorm:"size:80" json:"checkpoint"`
	DecisionID uint64     `json:"decision_id"`
	Error      string     `gorm:"type:text" json:"error"`
	StartedAt  time.Time  `json:"started_at"`
	PhaseAt    time.Time  `json:"phase_at"`
	EndedAt    *time.Time `json:"ended_at"`
}

// Decision is one Planner decision as JSON, with the columns an operator
// filters on.
type Decision struct {
	ID     uint64 `gorm:"primaryKey"`
	TimeUS int64  `gorm:"not null;index"`
	Cell   string `gorm:"size:63;index"`
	App    string `gorm:"size:63;index"`
	Kind   string `gorm:"size:16;not null"`
	Reason string `gorm:"size:32"`
	JSON   string `gorm:"type:text;not null"`
}

// PutApp creates or replaces an app; created reports which.
func (s *Store) PutApp(ctx context.Context, a *App) (created bool, err error) {
	err = s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		var n int64
		if err := tx.Model(&App{}).Where("name = ?", a.Name).Count(&n).Error; err != nil {
			return err
		}
		created = n == 0
		return tx.Clauses(clause.OnConflict{
			Columns:   []clause.Column{{Name: "name"}},
			DoUpdates: clause.AssignmentColumns([]string{"spec", "updated_at"}),
		}).Create(a).Error
	})
	return created, err
}

// AppByName finds an app.
func (s *Store) AppByName(ctx context.Context, name string) (*App, error) {
	var a App
	if err := s.db.WithContext(ctx).Where("name = ?", name).First(&a).Error; err != nil {
		return nil, notFound(err, "app "+name)
	}
	return &a, nil
}

// ListApps returns every app by name.
func (s *Store) ListApps(ctx context.Context) ([]App, error) {
	var as []App
	err := s.db.WithContext(ctx).Order("name").Find(&as).Error
	return as, err
}

// DeleteApp removes an app row (its cells are removed by the caller).
func (s *Store) DeleteApp(ctx context.Context, name string) error {
	res := s.db.WithContext(ctx).Where("name = ?", name).Delete(&App{})
	if res.Error != nil {
		return res.Error
	}
	if res.RowsAffected == 0 {
		return fmt.Errorf("app %s: %w", name, ErrNotFound)
	}
	return nil
}

// ListAppCells returns the cells of an app by id.
func (s *Store) ListAppCells(ctx context.Context, app string) ([]Cell, error) {
	var cs []Cell
	err := s.db.WithContext(ctx).Where("app = ?", app).Order("id").Find(&cs).Error
	return cs, err
}

// PutCheckpoint records an uploaded checkpoint (idempotent on its id).
func (s *Store) PutCheckpoint(ctx context.Context, c *Checkpoint) error {
	return s.db.WithContext(ctx).Clauses(clause.OnConflict{DoNothing: true}).Create(c).Error
}

// CheckpointByID finds a checkpoint.
func (s *Store) CheckpointByID(ctx context.Context, id string) (*Checkpoint, error) {
	var c Checkpoint
	if err := s.db.WithContext(ctx).Where("id = ?", id).First(&c).Error; err != nil {
		return nil, notFound(err, "checkpoint "+id)
	}
	return &c, nil
}

// LatestCheckpoint returns the cell's checkpoint with the highest sequence
// number; ErrNotFound if it has none.
func (s *Store) LatestCheckpoint(ctx context.Context, cell string) (*Checkpoint, error) {
	var c Checkpoint
	if err := s.db.WithContext(ctx).Where("cell = ?", cell).Order("seq DESC, created_at DESC").First(&c).Error; err != nil {
		return nil, notFound(err, "checkpoint of cell "+cell)
	}
	return &c, nil
}

// Checkpoints lists a cell's checkpoints, newest first.
func (s *Store) Checkpoints(ctx context.Context, cell string, limit int) ([]Checkpoint, error) {
	var cs []Checkpoint
	err := s.db.WithContext(ctx).Where("cell = ?", cell).Order("seq DESC, created_at DESC").Limit(limit).Find(&cs).Error
	return cs, err
}

// PruneCheckpoints deletes the rows of all but the newest keep checkpoints
// of cell (never one an open move names) and returns the deleted rows, whose
// objects the caller removes.
func (s *Store) PruneCheckpoints(ctx context.Context, cell string, keep int) ([]Checkpoint, error) {
	var old []Checkpoint
	err := s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		var all []Checkpoint
		if err := tx.Where("cell = ?", cell).Order("seq DESC, created_at DESC").Find(&all).Error; err != nil {
			return err
		}
		if len(all) <= keep {
			return nil
		}
		var pinned []string
		if err := tx.Model(&Move{}).Where("cell = ? AND open = ?", cell, true).Pluck("checkpoint", &pinned).Error; err != nil {
			return err
		}
		for _, c := range all[keep:] {
			if containsString(pinned, c.ID) {
				continue
			}
			if err := tx.Where("id = ?", c.ID).Delete(&Checkpoint{}).Error; err != nil {
				return err
			}
			old = append(old, c)
		}
		return nil
	})
	return old, err
}

func containsString(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// ErrMoveOpen is returned when a cell already has an open move.
var ErrMoveOpen = errors.New("the cell is already moving")

// OpenMoves lists the open moves, oldest first.
func (s *Store) OpenMoves(ctx context.Context) ([]Move, error) {
	var ms []Move
	err := s.db.WithContext(ctx).Where("open = ?", true).Order("started_at").Find(&ms).Error
	return ms, err
}

// Moves lists moves, newest first, of one cell when cell is not empty.
func (s *Store) Moves(ctx context.Context, cell string, limit int) ([]Move, error) {
	q := s.db.WithContext(ctx).Order("started_at DESC").Limit(limit)
	if cell != "" {
		q = q.Where("cell = ?", cell)
	}
	var ms []Move
	err := q.Find(&ms).Error
	return ms, err
}

// MoveByID finds a move.
func (s *Store) MoveByID(ctx context.Context, id string) (*Move, error) {
	var m Move
	if err := s.db.WithContext(ctx).Where("id = ?", id).First(&m).Error; err != nil {
		return nil, notFound(err, "move "+id)
	}
	return &m, nil
}

// Tx runs fn in one transaction with the store's helpers bound to it.
func (s *Store) Tx(ctx context.Context, fn func(tx *Tx) error) error {
	return s.db.WithContext(ctx).Transaction(func(db *gorm.DB) error { return fn(&Tx{db: db}) })
}

// Tx is a transaction over cells, moves and desired generations: a
// migration step changes them together or not at all.
type Tx struct{ db *gorm.DB }

// Cell reads a cell inside the transaction.
func (t *Tx) Cell(id string) (*Cell, error) {
	var c Cell
	if err := t.db.Where("id = ?", id).First(&c).Error; err != nil {
		return nil, notFound(err, "cell "+id)
	}
	return &c, nil
}

// SaveCell writes a cell's node, holder, spec and binding time (clearing
// its status when the node changes), and bumps the desired generation of
// every node named in touched.
func (t *Tx) SaveCell(c *Cell, touched ...string) error {
	var before Cell
	if err := t.db.Select("node").Where("id = ?", c.ID).First(&before).Error; err != nil {
		return notFound(err, "cell "+c.ID)
	}
	cols := map[string]any{
		"node": c.Node, "held_on": c.HeldOn, "held_spec": c.HeldSpec, "spec": c.Spec, "bound_us": c.BoundUS, "updated_at": time.Now(),
	}
	if before.Node != c.Node {
		// The status was the old node's: the new one reports its own.
		cols["status_json"], cols["status_us"] = "", 0
		c.StatusJSON, c.StatusUS = "", 0
	}
	if err := t.db.Model(&Cell{}).Where("id = ?", c.ID).Updates(cols).Error; err != nil {
		return err
	}
	return t.Bump(touched...)
}

// Bump increments the desired generation of each named node (once each).
func (t *Tx) Bump(nodes ...string) error {
	seen := map[string]bool{}
	for _, n := range nodes {
		if n == "" || seen[n] {
			continue
		}
		seen[n] = true
		if err := bumpGeneration(t.db, n); err != nil {
			return err
		}
	}
	return nil
}

// CreateMove opens a move; ErrMoveOpen if the cell has one open already.
func (t *Tx) CreateMove(m *Move) error {
	var n int64
	if err := t.db.Model(&Move{}).Where("cell = ? AND open = ?", m.Cell, true).Count(&n).Error; err != nil {
		return err
	}
	if n > 0 {
		return fmt.Errorf("cell %s: %w", m.Cell, ErrMoveOpen)
	}
	return t.db.Create(m).Error
}

// SaveMove writes a move's phase, checkpoint, error and end.
func (t *Tx) SaveMove(m *Move) error {
	return t.db.Model(&Move{}).Where("id = ?", m.ID).Updates(map[string]any{
		"phase": m.Phase, "open": m.Open, "checkpoint": m.Checkpoint, "error": m.Error,
		"phase_at": m.PhaseAt, "ended_at": m.EndedAt, "to_node": m.To,
	}).Error
}

// AddDecision stores a decision and returns its id.
func (t *Tx) AddDecision(d *Decision) (uint64, error) {
	if err := t.db.Create(d).Error; err != nil {
		return 0, err
	}
	return d.ID, nil
}

// AddDecisions stores decisions outside a transaction.
func (s *Store) AddDecisions(ctx context.Context, ds []Decision) error {
	if len(ds) == 0 {
		return nil
	}
	return s.db.WithContext(ctx).CreateInBatches(ds, 200).Error
}

// DecisionQuery filters decisions.
type DecisionQuery struct {
	Cell, App string
	BeforeID  uint64 // page backwards: only ids below this
	Limit     int
}

// Decisions lists decisions newest first.
func (s *Store) Decisions(ctx context.Context, q DecisionQuery) ([]Decision, error) {
	db := s.db.WithContext(ctx).Order("id DESC").Limit(q.Limit)
	if q.Cell != "" {
		db = db.Where("cell = ?", q.Cell)
	}
	if q.App != "" {
		db = db.Where("app = ?", q.App)
	}
	if q.BeforeID > 0 {
		db = db.Where("id < ?", q.BeforeID)
	}
	var ds []Decision
	err := db.Find(&ds).Error
	return ds, err
}

// PruneDecisions keeps the newest keep decisions.
func (s *Store) PruneDecisions(ctx context.Context, keep int) (int64, error) {
	var cutoff Decision
	err := s.db.WithContext(ctx).Order("id DESC").Offset(keep).Limit(1).Find(&cutoff).Error
	if err != nil || cutoff.ID == 0 {
		return 0, err
	}
	res := s.db.WithContext(ctx).Where("id <= ?", cutoff.ID).Delete(&Decision{})
	return res.RowsAffected, res.Error
}

// PrefetchFor lists the modules of cells with an open move to node: the
// node compiles them ahead so the move's downtime does not include it.
func (s *Store) PrefetchFor(ctx context.Context, node string) ([]string, error) {
	var mods []string
	err := s.db.WithContext(ctx).Table("moves").Joins("JOIN cells ON cells.id = moves.cell").
		Where("moves.open = ? AND moves.to_node = ?", true, node).Distinct().Order("cells.module").Pluck("cells.module", &mods).Error
	return mods, err
}
