package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// CreateUser adds a user; ErrConflict if the name is taken.
func (s *Store) CreateUser(ctx context.Context, u *User) error {
	if err := s.db.WithContext(ctx).Create(u).Error; err != nil {
		if isUnique(err) {
			return fmt.Errorf("user %q: %w", u.Username, ErrConflict)
		}
		return err
	}
	return nil
}

// UserByName finds a user.
func (s *Store) UserByName(ctx context.Context, name string) (*User, error) {
	var u User
	err := s.db.WithContext(ctx).Where("username = ?", name).First(&u).Error
	if err != nil {
		return nil, notFound(err, "user "+name)
	}
	return &u, nil
}

// CountUsers is how many users exist.
func (s *Store) CountUsers(ctx context.Context) (int64, error) {
	var n int64
	err := s.db.WithContext(ctx).Model(&User{}).Count(&n).Error
	return n, err
}

// Setting returns a setting, creating it with gen() the first time. Two
// consoles starting at once on one database agree on the first value written.
func (s *Store) Setting(ctx context.Context, key string, gen func() (string, error)) (string, error) {
	var st Setting
	err := s.db.WithContext(ctx).Where("key = ?", key).First(&st).Error
	if err == nil {
		return st.Value, nil
	}
	if !errors.Is(err, gorm.ErrRecordNotFound) {
		return "", err
	}
	v, err := gen()
	if err != nil {
		return "", err
	}
	if err := s.db.WithContext(ctx).Clauses(clause.OnConflict{DoNothing: true}).Create(&Setting{Key: key, Value: v}).Error; err != nil {
		return "", err
	}
	if err := s.db.WithContext(ctx).Where("key = ?", key).First(&st).Error; err != nil {
		return "", err
	}
	return st.Value, nil
}

// CreateToken stores a new enrollment token.
func (s *Store) CreateToken(ctx context.Context, t *EnrollmentToken) error {
	return s.db.WithContext(ctx).Create(t).Error
}

// Token refusal reasons.
var (
	ErrTokenUnknown = errors.New("enrollment token is not valid")
	ErrTokenUsed    = errors.New("enrollment token was already used")
	ErrTokenExpired = errors.New("enrollment token has expired")
)

// Enroll consumes the token with hash tokenHash and creates node n, in one
// transaction: a token enrolls exactly one node, even under concurrent use.
func (s *Store) Enroll(ctx context.Context, tokenHash string, now time.Time, n *Node) error {
	return s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		var t EnrollmentToken
		if err := tx.Where("token_hash = ?", tokenHash).First(&t).Error; err != nil {
			if errors.Is(err, gorm.ErrRecordNotFound) {
				return ErrTokenUnknown
			}
			return err
		}
		if t.UsedAt != nil {
			return ErrTokenUsed
		}
		if !now.Before(t.ExpiresAt) {
			return ErrTokenExpired
		}
		// The conditional update is the real guard against a race: only one
		// transaction can flip used_at from NULL.
		res := tx.Model(&EnrollmentToken{}).Where("id = ? AND used_at IS NULL", t.ID).
			Updates(map[string]any{"used_at": now, "used_by": n.Name})
		if res.Error != nil {
			return res.Error
		}
		if res.RowsAffected != 1 {
			return ErrTokenUsed
		}
		if err := tx.Create(n).Error; err != nil {
			if isUnique(err) {
				return fmt.Errorf("node %q: %w", n.Name, ErrConflict)
			}
			return err
		}
		return nil
	})
}

// NodeByName finds a node.
func (s *Store) NodeByName(ctx context.Context, name string) (*Node, error) {
	var n Node
	if err := s.db.WithContext(ctx).Where("name = ?", name).First(&n).Error; err != nil {
		return nil, notFound(err, "node "+name)
	}
	return &n, nil
}

// ListNodes returns every node by name.
func (s *Store) ListNodes(ctx context.Context) ([]Node, error) {
	var ns []Node
	err := s.db.WithContext(ctx).Order("name").Find(&ns).Error
	return ns, err
}

// Seen says a node was heard from at NowUS. WasOnline is its status as the
// caller read it: only a node that was not online gets a status change,
// which keeps the common case (an online node's heartbeat) one UPDATE.
type Seen struct {
	NowUS     int64
	WasOnline bool
	Fields    map[string]any // other node columns to update (heartbeat, arch…)
}

func (s *Store) seen(tx *gorm.DB, nodeID uint, seen Seen) (bool, error) {
	updates := map[string]any{"last_seen_us": seen.NowUS}
	for k, v := range seen.Fields {
		updates[k] = v
	}
	if seen.WasOnline {
		return false, tx.Model(&Node{}).Where("id = ?", nodeID).Updates(updates).Error
	}
	updates["status"], updates["status_us"], updates["status_reason"] = "online", seen.NowUS, "message received"
	res := tx.Model(&Node{}).Where("id = ? AND status <> ?", nodeID, "online").Updates(updates)
	if res.Error != nil || res.RowsAffected == 1 {
		return res.Error == nil, res.Error
	}
	// Someone else marked it online since the caller looked.
	delete(updates, "status")
	delete(updates, "status_us")
	delete(updates, "status_reason")
	return false, tx.Model(&Node{}).Where("id = ?", nodeID).Updates(updates).Error
}

// NodeSeen records a message from a node: it is online. It returns true
// when the node was not online before (a transition worth logging).
func (s *Store) NodeSeen(ctx context.Context, nodeID uint, seen Seen) (bool, error) {
	return s.seen(s.db.WithContext(ctx), nodeID, seen)
}

// MarkOffline sets one node offline with a reason; false if it already was.
func (s *Store) MarkOffline(ctx context.Context, nodeID uint, nowUS int64, reason string) (bool, error) {
	res := s.db.WithContext(ctx).Model(&Node{}).Where("id = ? AND status <> ?", nodeID, "offline").
		Updates(map[string]any{"status": "offline", "status_us": nowUS, "status_reason": reason})
	return res.RowsAffected == 1, res.Error
}

// SweepOffline marks offline every online node not heard from for misses
// heartbeats, and returns their names.
func (s *Store) SweepOffline(ctx context.Context, nowUS int64, misses int64, defaultHeartbeatUS int64) ([]string, error) {
	var stale []Node
	err := s.db.WithContext(ctx).Select("id", "name").
		Where("status = ? AND last_seen_us + ? * (CASE WHEN heartbeat_us > 0 THEN heartbeat_us ELSE ? END) < ?",
			"online", misses, defaultHeartbeatUS, nowUS).
		Find(&stale).Error
	if err != nil {
		return nil, err
	}
	var names []string
	for _, n := range stale {
		changed, err := s.MarkOffline(ctx, n.ID, nowUS, "missed heartbeats")
		if err != nil {
			return names, err
		}
		if changed {
			names = append(names, n.Name)
		}
	}
	return names, nil
}

// InsertSample stores a sample once and records the node as seen, in one
// transaction (one commit per message). A second copy of the same (node,
// time) is ignored and reported as not inserted. The node's latest sample is
// updated only by a newer one, so a back-fill does not overwrite it.
func (s *Store) InsertSample(ctx context.Context, smp *Sample, seen Seen) (inserted, became bool, err error) {
	err = s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		res := tx.Clauses(clause.OnConflict{DoNothing: true}).Create(smp)
		if res.Error != nil {
			return res.Error
		}
		inserted = res.RowsAffected == 1
		if inserted {
			err := tx.Model(&Node{}).Where("id = ? AND last_sample_us < ?", smp.NodeID, smp.TimeUS).
				Updates(map[string]any{"last_telemetry": smp.Payload, "last_sample_us": smp.TimeUS}).Error
			if err != nil {
				return err
			}
		}
		became, err = s.seen(tx, smp.NodeID, seen)
		return err
	})
	return inserted, became, err
}

// Samples returns a node's samples with sinceUS <= time < untilUS, oldest
// first, at most limit.
func (s *Store) Samples(ctx context.Context, nodeID uint, sinceUS, untilUS int64, limit int) ([]Sample, error) {
	var out []Sample
	err := s.db.WithContext(ctx).Where("node_id = ? AND time_us >= ? AND time_us < ?", nodeID, sinceUS, untilUS).
		Order("time_us").Limit(limit).Find(&out).Error
	return out, err
}

// DeleteSamplesBefore applies retention; it returns how many rows went.
func (s *Store) DeleteSamplesBefore(ctx context.Context, beforeUS int64) (int64, error) {
	res := s.db.WithContext(ctx).Where("time_us < ?", beforeUS).Delete(&Sample{})
	return res.RowsAffected, res.Error
}

// CountNodesByStatus returns how many nodes are in each status.
func (s *Store) CountNodesByStatus(ctx context.Context) (map[string]int64, error) {
	var rows []struct {
		Status string
		N      int64
	}
	err := s.db.WithContext(ctx).Model(&Node{}).Select("status, count(*) AS n").Group("status").Scan(&rows).Error
	out := map[string]int64{}
	for _, r := range rows {
		out[r.Status] = r.N
	}
	return out, err
}

// ListUsers returns users by name, of one status when status is not empty.
func (s *Store) ListUsers(ctx context.Context, status string) ([]User, error) {
	q := s.db.WithContext(ctx).Order("username")
	if status != "" {
		q = q.Where("status = ?", status)
	}
	var us []User
	err := q.Find(&us).Error
	return us, err
}

// SetUserStatus changes a user's status (approving records who and when).
func (s *Store) SetUserStatus(ctx context.Context, name, status, by string, now time.Time) error {
	cols := map[string]any{"status": status}
	if status == UserActive {
		cols["approved_by"], cols["approved_at"] = by, now
	}
	res := s.db.WithContext(ctx).Model(&User{}).Where("username = ?", name).Updates(cols)
	if res.Error != nil {
		return res.Error
	}
	if res.RowsAffected == 0 {
		return fmt.Errorf("user %s: %w", name, ErrNotFound)
	}
	return nil
}

// CreatePasswordReset stores a reset token (its hash).
func (s *Store) CreatePasswordReset(ctx context.Context, r *PasswordReset) error {
	return s.db.WithContext(ctx).Create(r).Error
}

// UsePasswordReset consumes a reset token and sets the user's password
// hash, in one transaction: ErrTokenUnknown, ErrTokenExpired, ErrTokenUsed.
func (s *Store) UsePasswordReset(ctx context.Context, tokenHash, passwordHash string, now time.Time) (string, error) {
	var user string
	err := s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		var r PasswordReset
		if err := tx.Where("token_hash = ?", tokenHash).First(&r).Error; err != nil {
			if errors.Is(err, gorm.ErrRecordNotFound) {
				return ErrTokenUnknown
			}
			return err
		}
		switch {
		case r.UsedAt != nil:
			return ErrTokenUsed
		case !now.Before(r.ExpiresAt):
			return ErrTokenExpired
		}
		res := tx.Model(&PasswordReset{}).Where("id = ? AND used_at IS NULL", r.ID).Update("used_at", now)
		if res.Error != nil {
			return res.Error
		}
		if res.RowsAffected == 0 {
			return ErrTokenUsed
		}
		user = r.Username
		return tx.Model(&User{}).Where("username = ?", r.Username).Update("password_hash", passwordHash).Error
	})
	return user, err
}
