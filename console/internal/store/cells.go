package store

import (
	"context"
	"fmt"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// bumpGeneration increments node's desired generation (creating it at 1).
func bumpGeneration(tx *gorm.DB, node string) error {
	return tx.Clauses(clause.OnConflict{
		Columns:   []clause.Column{{Name: "node"}},
		DoUpdates: clause.Assignments(map[string]any{"generation": gorm.Expr("node_desired.generation + 1"), "updated_at": gorm.Expr("excluded.updated_at")}),
	}).Create(&NodeDesired{Node: node, Generation: 1}).Error
}

// CreateCell records a cell and bumps its node's desired generation, in one
// transaction; ErrConflict if the id is taken (on any node).
func (s *Store) CreateCell(ctx context.Context, c *Cell) error {
	return s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := tx.Create(c).Error; err != nil {
			if isUnique(err) {
				return fmt.Errorf("cell %s: %w", c.ID, ErrConflict)
			}
			return err
		}
		return bumpGeneration(tx, c.Node)
	})
}

// DeleteCell removes a cell and bumps its node's desired generation (and
// that of a node holding it mid-migration), in one transaction, and returns
// the nodes whose desired state changed.
func (s *Store) DeleteCell(ctx context.Context, id string) ([]string, error) {
	var nodes []string
	err := s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		var c Cell
		if err := tx.Where("id = ?", id).First(&c).Error; err != nil {
			return notFound(err, "cell "+id)
		}
		res := tx.Where("id = ?", id).Delete(&Cell{})
		if res.Error != nil {
			return res.Error
		}
		if res.RowsAffected == 0 { // deleted concurrently
			return fmt.Errorf("cell %s: %w", id, ErrNotFound)
		}
		nodes = []string{c.Node}
		if c.HeldOn != "" && c.HeldOn != c.Node {
			nodes = append(nodes, c.HeldOn)
		}
		for _, n := range nodes {
			if err := bumpGeneration(tx, n); err != nil {
				return err
			}
		}
		return nil
	})
	return nodes, err
}

// CellByID finds a cell.
func (s *Store) CellByID(ctx context.Context, id string) (*Cell, error) {
	var c Cell
	if err := s.db.WithContext(ctx).Where("id = ?", id).First(&c).Error; err != nil {
		return nil, notFound(err, "cell "+id)
	}
	return &c, nil
}

// ListCells returns the cells of node (every cell when node is empty), by
// node and id.
func (s *Store) ListCells(ctx context.Context, node string) ([]Cell, error) {
	q := s.db.WithContext(ctx).Order("node, id")
	if node != "" {
		q = q.Where("node = ?", node)
	}
	var cs []Cell
	err := q.Find(&cs).Error
	return cs, err
}

// DesiredState reads a node's generation, cells (by id; with the held
// copies of cells migrating away from it) and declared
// streams (by name) in one transaction, so they agree. Generation is 0 for a
// node that never had a desired state.
func (s *Store) DesiredState(ctx context.Context, node string) (int64, []Cell, []StreamDecl, error) {
	var gen int64
	var cs []Cell
	var ds []StreamDecl
	err := s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		var d NodeDesired
		if err := tx.Where("node = ?", node).Limit(1).Find(&d).Error; err != nil {
			return err
		}
		gen = d.Generation
		if err := tx.Where("node = ? OR held_on = ?", node, node).Order("id").Find(&cs).Error; err != nil {
			return err
		}
		// A migration's source lists the copy it holds, not the target's spec.
		for i := range cs {
			if cs[i].Node != node && cs[i].HeldOn == node {
				cs[i].Spec = cs[i].HeldSpec
			}
		}
		return tx.Where("node = ?", node).Order("name").Find(&ds).Error
	})
	return gen, cs, ds, err
}

// NodesWithDesired lists the nodes that have had a desired state.
func (s *Store) NodesWithDesired(ctx context.Context) ([]string, error) {
	var names []string
	err := s.db.WithContext(ctx).Model(&NodeDesired{}).Order("node").Pluck("node", &names).Error
	return names, err
}

// SetCellStatuses stores the newest status of cells of node: statuses maps a
// cell id to its protocol.CellStatus JSON. Only cells on node are touched
// (a node cannot write another node's cell); it returns how many were.
func (s *Store) SetCellStatuses(ctx context.Context, node string, statuses map[string]string, atUS int64) (int, error) {
	updated := 0
	err := s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		updated = 0
		for id, js := range statuses {
			res := tx.Model(&Cell{}).Where("id = ? AND node = ?", id, node).
				UpdateColumns(map[string]any{"status_json": js, "status_us": atUS})
			if res.Error != nil {
				return res.Error
			}
			updated += int(res.RowsAffected)
		}
		return nil
	})
	return updated, err
}
