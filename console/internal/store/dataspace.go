package store

import (
	"context"
	"fmt"
	"time"

	"gorm.io/gorm"
)

// Dataset is a provider's published sensor dataset. Engine is the engine
// template (JSON) its datareads are encoded with, pinned at EngineVersion.
type Dataset struct {
	ID               string `gorm:"primaryKey;size:63"`
	Owner            string `gorm:"size:64;index;not null"`
	Title            string `gorm:"size:200;not null"`
	Description      string `gorm:"type:text"`
	Engine           string `gorm:"type:text;not null"`
	EngineVersion    int    `gorm:"not null"`
	Type             string `gorm:"size:16;not null"` // free | purchase | rental
	PriceCents       int64  `gorm:"not null;default:0"`
	License          string `gorm:"size:200"`
	LocationRequired bool   `gorm:"not null;default:false"`
	// AccessPolicy decides who sees the dataset in the catalog;
	// ContractPolicy who may obtain and use its data (JSON policies).
	AccessPolicy   string `gorm:"type:text"`
	ContractPolicy string `gorm:"type:text"`
	Readings       int64  `gorm:"not null;default:0"`
	Rejected       int64  `gorm:"not null;default:0"` // readings refused (no location where one is required, bad values)
	CreatedAt      time.Time
	UpdatedAt      time.Time
}

// Dataread is one stored reading of a dataset: its time, optional
// position and the engine-encoded blob.
//
// Two indexes serve the two ways readings are asked for: by time (a
// dataset's readings of a period) and by place (a bounding box, then time:
// one station's week reads a narrow longitude range instead of every
// station's readings of that week).
type Dataread struct {
	ID      uint64   `gorm:"primaryKey"`
	Dataset string   `gorm:"size:63;not null;index:idx_dataread_time,priority:1;index:idx_dataread_place,priority:1"`
	TimeUS  int64    `gorm:"not null;index:idx_dataread_time,priority:2;index:idx_dataread_place,priority:4"`
	Lat     *float64 `gorm:"index:idx_dataread_place,priority:3"`
	Lon     *float64 `gorm:"index:idx_dataread_place,priority:2"`
	Blob    []byte   `gorm:"not null"`
}

// CreateDataset stores a new dataset; ErrConflict if the id is taken.
func (s *Store) CreateDataset(ctx context.Context, d *Dataset) error {
	if err := s.db.WithContext(ctx).Create(d).Error; err != nil {
		if isUnique(err) {
			return fmt.Errorf("dataset %s: %w", d.ID, ErrConflict)
		}
		return err
	}
	return nil
}

// DatasetByID finds a dataset.
func (s *Store) DatasetByID(ctx context.Context, id string) (*Dataset, error) {
	var d Dataset
	if err := s.db.WithContext(ctx).Where("id = ?", id).First(&d).Error; err != nil {
		return nil, notFound(err, "dataset "+id)
	}
	return &d, nil
}

// ListDatasets returns datasets by id (of one owner when owner is set).
func (s *Store) ListDatasets(ctx context.Context, owner string) ([]Dataset, error) {
	q := s.db.WithContext(ctx).Order("id")
	if owner != "" {
		q = q.Where("owner = ?", owner)
	}
	var ds []Dataset
	err := q.Find(&ds).Error
	return ds, err
}

// AddDatareads stores readings of a dataset and counts them (and the
// rejected ones) on it, in one transaction.
func (s *Store) AddDatareads(ctx context.Context, dataset string, rs []Dataread, rejected int) error {
	return s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if len(rs) > 0 {
			if err := tx.CreateInBatches(rs, 500).Error; err != nil {
				return err
			}
		}
		return tx.Model(&Dataset{}).Where("id = ?", dataset).Updates(map[string]any{
			"readings": gorm.Expr("readings + ?", len(rs)), "rejected": gorm.Expr("rejected + ?", rejected),
		}).Error
	})
}

// DatareadQuery selects readings of one dataset: a time range, an
// optional bounding box, a page after a reading id.
type DatareadQuery struct {
	Dataset string
	SinceUS int64 // inclusive
	UntilUS int64 // exclusive; 0: no bound
	BBox    *[4]float64
	AfterID uint64
	Limit   int
}

// Datareads returns readings by time, then id.
func (s *Store) Datareads(ctx context.Context, q DatareadQuery) ([]Dataread, error) {
	db := s.db.WithContext(ctx).Where("dataset = ? AND time_us >= ?", q.Dataset, q.SinceUS)
	if q.UntilUS > 0 {
		db = db.Where("time_us < ?", q.UntilUS)
	}
	if b := q.BBox; b != nil {
		db = db.Where("lon >= ? AND lat >= ? AND lon <= ? AND lat <= ?", b[0], b[1], b[2], b[3])
	}
	if q.AfterID > 0 {
		db = db.Where("id > ?", q.AfterID)
	}
	var rs []Dataread
	err := db.Order("id").Limit(q.Limit).Find(&rs).Error
	return rs, err
}

// Contract is a consumer's agreement to use a dataset: a purchase, or a
// rental until EndAt.
type Contract struct {
	ID           string `gorm:"primaryKey;size:40"`
	Dataset      string `gorm:"size:63;index;not null"`
	Consumer     string `gorm:"size:64;index;not null"` // assignee
	Provider     string `gorm:"size:64;index;not null"` // assigner
	Kind         string `gorm:"size:16;not null"`       // purchase | rental | free
	Purpose      string `gorm:"size:64"`
	State        string `gorm:"size:16;not null"`
	StartAt      time.Time
	EndAt        *time.Time
	Document     string `gorm:"type:text"` // the provider's signed validation
	AgreedBy     string `gorm:"size:64"`
	AgreedAt     *time.Time
	TerminatedBy string `gorm:"size:64"`
	CreatedAt    time.Time
	UpdatedAt    time.Time
}

// AuditEntry records one data access: who read what, when, under which
// contract.
type AuditEntry struct {
	ID       uint64 `gorm:"primaryKey"`
	TimeUS   int64  `gorm:"not null;index"`
	User     string `gorm:"size:64;index;not null"`
	Dataset  string `gorm:"size:63;index;not null"`
	Contract string `gorm:"size:40"`
	Query    string `gorm:"type:text"`
	Records  int    `gorm:"not null"`
}

// CreateContract stores a contract.
func (s *Store) CreateContract(ctx context.Context, c *Contract) error {
	return s.db.WithContext(ctx).Create(c).Error
}

// ContractByID finds a contract.
func (s *Store) ContractByID(ctx context.Context, id string) (*Contract, error) {
	var c Contract
	if err := s.db.WithContext(ctx).Where("id = ?", id).First(&c).Error; err != nil {
		return nil, notFound(err, "contract "+id)
	}
	return &c, nil
}

// SaveContract writes a contract's state fields.
func (s *Store) SaveContract(ctx context.Context, c *Contract) error {
	return s.db.WithContext(ctx).Model(&Contract{}).Where("id = ?", c.ID).Updates(map[string]any{
		"state": c.State, "document": c.Document, "agreed_by": c.AgreedBy, "agreed_at": c.AgreedAt,
		"terminated_by": c.TerminatedBy, "updated_at": time.Now(),
	}).Error
}

// ContractQuery filters contracts.
type ContractQuery struct{ Consumer, Provider, Dataset string }

// Contracts lists contracts, newest first.
func (s *Store) Contracts(ctx context.Context, q ContractQuery) ([]Contract, error) {
	db := s.db.WithContext(ctx).Order("created_at DESC").Limit(1000)
	if q.Consumer != "" {
		db = db.Where("consumer = ?", q.Consumer)
	}
	if q.Provider != "" {
		db = db.Where("provider = ?", q.Provider)
	}
	if q.Dataset != "" {
		db = db.Where("dataset = ?", q.Dataset)
	}
	var cs []Contract
	err := db.Find(&cs).Error
	return cs, err
}

// SetDatasetPolicies replaces a dataset's policies.
func (s *Store) SetDatasetPolicies(ctx context.Context, id, access, contract string) error {
	return s.db.WithContext(ctx).Model(&Dataset{}).Where("id = ?", id).Updates(map[string]any{"access_policy": access, "contract_policy": contract}).Error
}

// Audit records a data access.
func (s *Store) Audit(ctx context.Context, e *AuditEntry) error {
	return s.db.WithContext(ctx).Create(e).Error
}

// AuditLog lists accesses newest first: of datasets owned by owner when set.
func (s *Store) AuditLog(ctx context.Context, owner, dataset string, limit int) ([]AuditEntry, error) {
	db := s.db.WithContext(ctx).Order("id DESC").Limit(limit)
	if owner != "" {
		db = db.Where("dataset IN (?)", s.db.Model(&Dataset{}).Select("id").Where("owner = ?", owner))
	}
	if dataset != "" {
		db = db.Where("dataset = ?", dataset)
	}
	var es []AuditEntry
	err := db.Find(&es).Error
	return es, err
}
