package store

import (
	"context"
	"errors"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// NodeStream is the newest protocol.StreamStatus a node reported for one of
// its streams (StatusJSON), and when the console received it.
type NodeStream struct {
	Node       string `gorm:"primaryKey;size:63"`
	Name       string `gorm:"primaryKey;size:63"`
	StatusJSON string `gorm:"type:text;not null"`
	StatusUS   int64  `gorm:"not null"`
}

// StreamSegment is one sealed segment of a node's stream in the object
// store: records First..Last (offsets, inclusive). A row is created when the
// agent asks where to upload (Committed false) and committed once the
// console has checked the object's size and checksum; only then may the
// agent delete its local copy.
type StreamSegment struct {
	ID          string `gorm:"primaryKey;size:40"`
	Node        string `gorm:"size:63;not null;uniqueIndex:idx_segment_range,priority:1"`
	Stream      string `gorm:"size:63;not null;uniqueIndex:idx_segment_range,priority:2"`
	First       uint64 `gorm:"not null;uniqueIndex:idx_segment_range,priority:3"`
	Last        uint64 `gorm:"not null"`
	Count       uint64 `gorm:"not null"`
	MinUS       int64  `gorm:"not null"` // oldest record time, Unix microseconds
	MaxUS       int64  `gorm:"not null"`
	Bytes       int64  `gorm:"not null"`
	SHA256      string `gorm:"size:64;not null"`
	MD5         string `gorm:"size:32;not null"`  // hex; S3 checks it on PUT (Content-MD5) and returns it as the ETag
	Key         string `gorm:"size:512;not null"` // object key
	Committed   bool   `gorm:"not null;default:false;index"`
	CreatedAt   time.Time
	CommittedAt *time.Time
}

// StreamDecl is a stream the console declares on a node: Spec is the
// protocol.StreamSpec as JSON, listed in the node's desired state.
type StreamDecl struct {
	Node      string `gorm:"primaryKey;size:63"`
	Name      string `gorm:"primaryKey;size:63"`
	Spec      string `gorm:"type:text;not null"`
	CreatedBy string `gorm:"size:64"`
	CreatedAt time.Time
	UpdatedAt time.Time
}

// PutStreamDecl creates or replaces a stream declaration and bumps the
// node's desired generation, in one transaction.
func (s *Store) PutStreamDecl(ctx context.Context, d *StreamDecl) error {
	return s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := tx.Clauses(clause.OnConflict{
			Columns:   []clause.Column{{Name: "node"}, {Name: "name"}},
			DoUpdates: clause.AssignmentColumns([]string{"spec", "updated_at"}),
		}).Create(d).Error; err != nil {
			return err
		}
		return bumpGeneration(tx, d.Node)
	})
}

// DeleteStreamDecl removes a declaration (the node keeps the data it has)
// and bumps the node's desired generation; ErrNotFound if there is none.
func (s *Store) DeleteStreamDecl(ctx context.Context, node, name string) error {
	return s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		res := tx.Where("node = ? AND name = ?", node, name).Delete(&StreamDecl{})
		if res.Error != nil {
			return res.Error
		}
		if res.RowsAffected == 0 {
			return ErrNotFound
		}
		return bumpGeneration(tx, node)
	})
}

// SaveNodeStreams replaces the stored status of each stream a node reported.
// Streams it no longer reports are removed.
func (s *Store) SaveNodeStreams(ctx context.Context, node string, rows []NodeStream) error {
	return s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		names := make([]string, 0, len(rows))
		for _, r := range rows {
			names = append(names, r.Name)
		}
		q := tx.Where("node = ?", node)
		if len(names) > 0 {
			q = q.Where("name NOT IN ?", names)
		}
		if err := q.Delete(&NodeStream{}).Error; err != nil {
			return err
		}
		if len(rows) == 0 {
			return nil
		}
		return tx.Clauses(clause.OnConflict{UpdateAll: true}).Create(&rows).Error
	})
}

// NodeStreams returns a node's reported streams by name.
func (s *Store) NodeStreams(ctx context.Context, node string) ([]NodeStream, error) {
	var out []NodeStream
	err := s.db.WithContext(ctx).Where("node = ?", node).Order("name").Find(&out).Error
	return out, err
}

// NodeStreamByName returns one reported stream, or ErrNotFound.
func (s *Store) NodeStreamByName(ctx context.Context, node, name string) (NodeStream, error) {
	var out NodeStream
	err := s.db.WithContext(ctx).Where("node = ? AND name = ?", node, name).Take(&out).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return out, ErrNotFound
	}
	return out, err
}
