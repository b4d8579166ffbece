package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// Bundle is an uploaded OTA bundle (shared/ota): its bytes live in the
// object store under its id, the SHA-256 of the bundle file; the row keeps
// its verified manifest. One bundle per release and arch: a release names
// one set of bytes, so "is this node at that release?" has one answer.
type Bundle struct {
	ID         string    `gorm:"primaryKey;size:64"`
	Version    string    `gorm:"size:80;not null"`                                                // as the manifest says it
	Semver     string    `gorm:"size:24;not null;uniqueIndex:idx_bundles_semver_arch,priority:1"` // major.minor.patch of Version
	Arch       string    `gorm:"size:16;not null;uniqueIndex:idx_bundles_semver_arch,priority:2"`
	SizeBytes  int64     `gorm:"not null"`
	Manifest   string    `gorm:"type:text;not null"` // the manifest as JSON
	UploadedBy string    `gorm:"size:64"`
	UploadedAt time.Time `gorm:"not null;index"`
}

// Rollout is one release going out to a set of nodes in waves. Request is
// the operator's request as JSON; the columns are what the engine steps
// on. Rev counts writes: SaveRollout refuses a write based on a stale read.
type Rollout struct {
	ID      string `gorm:"primaryKey;size:80"`
	Bundle  string `gorm:"size:64;not null;index"`
	Version string `gorm:"size:80;not null"`
	Arch    string `gorm:"size:16;not null"`
	Request string `gorm:"type:text;not null"`
	// Update is the protocol.UpdateSpec (JSON) the desired state of each
	// of its updating nodes carries.
	UpdateSpec      string `gorm:"type:text;not null"`
	WaveSize        int    `gorm:"not null"`
	Waves           int    `gorm:"not null"`
	Wave            int    `gorm:"not null;default:0"` // the wave under way, 1-based; 0 before the first
	Threshold       int    `gorm:"not null"`           // failures tolerated; one more halts the rollout
	HealthSeconds   int    `gorm:"not null"`
	DownloadSeconds int    `gorm:"not null"`
	State           string `gorm:"size:16;not null;index"`
	Reason          string `gorm:"type:text"`
	Rev             int64  `gorm:"not null;default:0"`
	CreatedBy       string `gorm:"size:64"`
	CreatedAt       time.Time
	UpdatedAt       time.Time
	FinishedAt      *time.Time
}

// RolloutNode is one node of a rollout: skipped (and why), or its wave,
// state and the newest update status it reported.
type RolloutNode struct {
	Rollout string `gorm:"primaryKey;size:80"`
	Node    string `gorm:"primaryKey;size:63;index"`
	Wave    int    `gorm:"not null;default:0"`
	State   string `gorm:"size:16;not null"`
	Reason  string `gorm:"type:text"`
	// Active is the node's name while the rollout may still change the
	// node's desired state (pending or updating), NULL after. Its unique
	// index keeps a node in one active rollout at a time, also across
	// console replicas (NULLs never collide, on SQLite and PostgreSQL).
	Active   *string `gorm:"size:63;uniqueIndex"`
	Phase    string  `gorm:"size:16"`
	Running  string  `gorm:"size:80"`
	Slot     string  `gorm:"size:16"`
	Error    string  `gorm:"type:text"`
	Progress float64 `gorm:"not null;default:0"`
	// ReportUS is the agent's time of the newest report applied (Unix µs):
	// an older report arriving late is ignored.
	ReportUS   int64 `gorm:"not null;default:0"`
	StartedAt  *time.Time
	ReportedAt *time.Time // console time of the newest report applied
	ProgressAt *time.Time // when the node last moved on: started, a new phase, more downloaded
	FinishedAt *time.Time
}

// NodeUpdate is the newest update status (protocol.UpdateStatus as JSON)
// a node reported in its actual state, whatever rollout it belongs to.
type NodeUpdate struct {
	Node       string `gorm:"primaryKey;size:63"`
	StatusJSON string `gorm:"type:text;not null"`
	TimeUS     int64  `gorm:"not null"` // the status's own time (the agent's clock)
	ReceivedUS int64  `gorm:"not null"`
}

// Rollout states.
const (
	RolloutRunning   = "running"
	RolloutCompleted = "completed"
	RolloutHalted    = "halted"
	RolloutCancelled = "cancelled"
)

// Rollout node states.
const (
	NodeSkipped    = "skipped"     // never part of it (Reason says why)
	NodePending    = "pending"     // waits for its wave
	NodeUpdating   = "updating"    // its desired state carries the update
	NodeCommitted  = "committed"   // runs the release
	NodeFailed     = "failed"      // rolled back, refused, failed or timed out (Reason)
	NodeCancelled  = "cancelled"   // was updating when the rollout was cancelled
	NodeNotStarted = "not-started" // was pending when the rollout halted or was cancelled
)

// CreateBundle records an uploaded bundle: ErrConflict if its id, or a
// bundle of the same release and arch, is recorded already.
func (s *Store) CreateBundle(ctx context.Context, b *Bundle) error {
	if err := s.db.WithContext(ctx).Create(b).Error; err != nil {
		if isUnique(err) {
			return fmt.Errorf("bundle %s (release %s, %s): %w", b.ID, b.Semver, b.Arch, ErrConflict)
		}
		return err
	}
	return nil
}

// BundleByID finds a bundle by the SHA-256 of its file.
func (s *Store) BundleByID(ctx context.Context, id string) (*Bundle, error) {
	var b Bundle
	if err := s.db.WithContext(ctx).Where("id = ?", id).First(&b).Error; err != nil {
		return nil, notFound(err, "bundle "+id)
	}
	return &b, nil
}

// BundleByRelease finds the bundle of a release (major.minor.patch) and arch.
func (s *Store) BundleByRelease(ctx context.Context, semver, arch string) (*Bundle, error) {
	var b Bundle
	if err := s.db.WithContext(ctx).Where("semver = ? AND arch = ?", semver, arch).First(&b).Error; err != nil {
		return nil, notFound(err, "bundle of release "+semver+" for "+arch)
	}
	return &b, nil
}

// ListBundles returns every bundle, newest first.
func (s *Store) ListBundles(ctx context.Context) ([]Bundle, error) {
	var bs []Bundle
	err := s.db.WithContext(ctx).Order("uploaded_at DESC, id").Find(&bs).Error
	return bs, err
}

// DeleteBundle removes a bundle's row; ErrConflict while a rollout that is
// not finished with its nodes (running, or halted with nodes updating)
// uses it. Finished rollouts keep naming it.
func (s *Store) DeleteBundle(ctx context.Context, id string) error {
	return s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		var users []string
		err := tx.Model(&Rollout{}).Where("bundle = ? AND (state = ? OR id IN (SELECT rollout FROM rollout_nodes WHERE state = ?))",
			id, RolloutRunning, NodeUpdating).Pluck("id", &users).Error
		if err != nil {
			return err
		}
		if len(users) > 0 {
			return fmt.Errorf("bundle %s is in use by rollout %s: cancel it first: %w", id, users[0], ErrConflict)
		}
		res := tx.Where("id = ?", id).Delete(&Bundle{})
		if res.Error != nil {
			return res.Error
		}
		if res.RowsAffected == 0 {
			return fmt.Errorf("bundle %s: %w", id, ErrNotFound)
		}
		return nil
	})
}

// CreateRollout records a rollout with its nodes (targets and skipped) and
// bumps the desired generation of the nodes in bump (those it starts at
// once), in one transaction. A node already active in another rollout makes
// it fail with ErrConflict, as does a taken id.
func (s *Store) CreateRollout(ctx context.Context, r *Rollout, nodes []RolloutNode, bump []string) error {
	return s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := tx.Create(r).Error; err != nil {
			if isUnique(err) {
				return fmt.Errorf("rollout %s: %w", r.ID, ErrConflict)
			}
			return err
		}
		if len(nodes) > 0 {
			if err := tx.CreateInBatches(nodes, 200).Error; err != nil {
				if isUnique(err) {
					return fmt.Errorf("a node of rollout %s joined another rollout meanwhile; retry: %w", r.ID, ErrConflict)
				}
				return err
			}
		}
		for _, n := range bump {
			if err := bumpGeneration(tx, n); err != nil {
				return err
			}
		}
		return nil
	})
}

// errStale is SaveRollout's answer to a write based on an old read.
var errStale = errors.New("rollout changed since it was read")

// ErrStale reports that SaveRollout refused a write based on a stale read;
// read again and redo the change.
func ErrStale(err error) bool { return errors.Is(err, errStale) }

// SaveRollout writes r and the given rows of its nodes, and bumps the
// desired generation of the nodes in bump, in one transaction — if r is
// still at revision r.Rev as read; else nothing is written and ErrStale
// says so. On success r.Rev is the new revision.
func (s *Store) SaveRollout(ctx context.Context, r *Rollout, nodes []RolloutNode, bump []string) error {
	err := s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		res := tx.Model(&Rollout{}).Where("id = ? AND rev = ?", r.ID, r.Rev).Updates(map[string]any{
			"wave": r.Wave, "state": r.State, "reason": r.Reason, "finished_at": r.FinishedAt,
			"rev": r.Rev + 1, "updated_at": time.Now().UTC(),
		})
		if res.Error != nil {
			return res.Error
		}
		if res.RowsAffected == 0 {
			return fmt.Errorf("rollout %s: %w", r.ID, errStale)
		}
		for i := range nodes {
			n := &nodes[i]
			if n.Rollout != r.ID {
				return fmt.Errorf("node %s belongs to rollout %s, not %s", n.Node, n.Rollout, r.ID)
			}
			res := tx.Model(&RolloutNode{}).Where("rollout = ? AND node = ?", n.Rollout, n.Node).Updates(map[string]any{
				"wave": n.Wave, "state": n.State, "reason": n.Reason, "active": n.Active, "phase": n.Phase,
				"running": n.Running, "slot": n.Slot, "error": n.Error, "progress": n.Progress, "report_us": n.ReportUS,
				"started_at": n.StartedAt, "reported_at": n.ReportedAt, "progress_at": n.ProgressAt, "finished_at": n.FinishedAt,
			})
			if res.Error != nil {
				return res.Error
			}
			if res.RowsAffected == 0 {
				return fmt.Errorf("rollout %s has no node %s: %w", r.ID, n.Node, ErrNotFound)
			}
		}
		for _, n := range bump {
			if err := bumpGeneration(tx, n); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		r.Rev++
	}
	return err
}

// RolloutByID reads a rollout and its nodes (by wave, then name; skipped
// ones last).
func (s *Store) RolloutByID(ctx context.Context, id string) (*Rollout, []RolloutNode, error) {
	var r Rollout
	var ns []RolloutNode
	err := s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := tx.Where("id = ?", id).First(&r).Error; err != nil {
			return notFound(err, "rollout "+id)
		}
		return tx.Where("rollout = ?", id).Order(nodeOrder).Find(&ns).Error
	})
	if err != nil {
		return nil, nil, err
	}
	return &r, ns, nil
}

// nodeOrder lists a rollout's nodes by wave, skipped ones (wave 0) last.
const nodeOrder = "CASE WHEN wave = 0 THEN 1 ELSE 0 END, wave, node"

// ListRollouts returns rollouts, newest first, at most limit (0: all);
// states filters by state when not empty.
func (s *Store) ListRollouts(ctx context.Context, states []string, limit int) ([]Rollout, error) {
	q := s.db.WithContext(ctx).Order("created_at DESC, id DESC")
	if len(states) > 0 {
		q = q.Where("state IN ?", states)
	}
	if limit > 0 {
		q = q.Limit(limit)
	}
	var rs []Rollout
	err := q.Find(&rs).Error
	return rs, err
}

// RolloutNodes returns the nodes of the given rollouts, by rollout.
func (s *Store) RolloutNodes(ctx context.Context, ids []string) (map[string][]RolloutNode, error) {
	out := make(map[string][]RolloutNode, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	var ns []RolloutNode
	if err := s.db.WithContext(ctx).Where("rollout IN ?", ids).Order("rollout, " + nodeOrder).Find(&ns).Error; err != nil {
		return nil, err
	}
	for _, n := range ns {
		out[n.Rollout] = append(out[n.Rollout], n)
	}
	return out, nil
}

// LiveRollouts lists the rollouts the engine steps: running ones, and
// halted ones whose nodes of the last wave are still updating.
func (s *Store) LiveRollouts(ctx context.Context) ([]Rollout, error) {
	var rs []Rollout
	err := s.db.WithContext(ctx).Where("state = ? OR (state = ? AND id IN (SELECT rollout FROM rollout_nodes WHERE state = ?))",
		RolloutRunning, RolloutHalted, NodeUpdating).Order("created_at, id").Find(&rs).Error
	return rs, err
}

// ActiveRollouts maps each node active in a rollout (pending or updating)
// to that rollout.
func (s *Store) ActiveRollouts(ctx context.Context) (map[string]string, error) {
	var ns []RolloutNode
	if err := s.db.WithContext(ctx).Where("active IS NOT NULL").Find(&ns).Error; err != nil {
		return nil, err
	}
	out := make(map[string]string, len(ns))
	for _, n := range ns {
		out[n.Node] = n.Rollout
	}
	return out, nil
}

// NodeUpdateSpec returns the update (protocol.UpdateSpec JSON) node's desired
// state carries: that of the rollout in which it is updating, "" for none.
func (s *Store) NodeUpdateSpec(ctx context.Context, node string) (string, error) {
	var specs []string
	err := s.db.WithContext(ctx).Table("rollouts").Joins("JOIN rollout_nodes ON rollout_nodes.rollout = rollouts.id").
		Where("rollout_nodes.node = ? AND rollout_nodes.state = ?", node, NodeUpdating).
		Order("rollouts.created_at DESC").Limit(1).Pluck("rollouts.update_spec", &specs).Error
	if err != nil || len(specs) == 0 {
		return "", err
	}
	return specs[0], nil
}

// SaveNodeUpdate stores the newest update status a node reported, unless
// the one stored is newer by its own time (a late, out-of-order message).
func (s *Store) SaveNodeUpdate(ctx context.Context, u *NodeUpdate) error {
	return s.db.WithContext(ctx).Clauses(clause.OnConflict{
		Columns:   []clause.Column{{Name: "node"}},
		DoUpdates: clause.AssignmentColumns([]string{"status_json", "time_us", "received_us"}),
		Where:     clause.Where{Exprs: []clause.Expression{clause.Expr{SQL: "node_updates.time_us <= excluded.time_us"}}},
	}).Create(u).Error
}

// NodeUpdates returns the newest update status of each of nodes that
// reported one.
func (s *Store) NodeUpdates(ctx context.Context, nodes []string) (map[string]NodeUpdate, error) {
	out := make(map[string]NodeUpdate, len(nodes))
	if len(nodes) == 0 {
		return out, nil
	}
	var us []NodeUpdate
	if err := s.db.WithContext(ctx).Where("node IN ?", nodes).Find(&us).Error; err != nil {
		return nil, err
	}
	for _, u := range us {
		out[u.Node] = u
	}
	return out, nil
}
