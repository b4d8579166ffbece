package store

import (
	"context"
	"fmt"
)

// CreateModule records an uploaded module; ErrConflict if its digest is
// already recorded (someone uploaded the same bytes first).
func (s *Store) CreateModule(ctx context.Context, m *Module) error {
	if err := s.db.WithContext(ctx).Create(m).Error; err != nil {
		if isUnique(err) {
			return fmt.Errorf("module %s: %w", m.Digest, ErrConflict)
		}
		return err
	}
	return nil
}

// ModuleByDigest finds a module by the SHA-256 hex of its bytes.
func (s *Store) ModuleByDigest(ctx context.Context, digest string) (*Module, error) {
	var m Module
	if err := s.db.WithContext(ctx).Where("digest = ?", digest).First(&m).Error; err != nil {
		return nil, notFound(err, "module "+digest)
	}
	return &m, nil
}

// ListModules returns every module, newest first.
func (s *Store) ListModules(ctx context.Context) ([]Module, error) {
	var ms []Module
	err := s.db.WithContext(ctx).Order("uploaded_at DESC, id DESC").Find(&ms).Error
	return ms, err
}
