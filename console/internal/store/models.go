package store

import "time"

// Roles a console user can have: the fleet's (admin, operator) and the
// dataspace's (provider, consumer).
const (
	RoleAdmin    = "admin"
	RoleOperator = "operator"
	RoleProvider = "provider"
	RoleConsumer = "consumer"
)

// User account states: a registered user waits for an admin's approval.
const (
	UserActive   = "active"
	UserPending  = "pending"
	UserDisabled = "disabled"
)

// User is a person who logs in to the console.
type User struct {
	ID           uint   `gorm:"primaryKey"`
	Username     string `gorm:"size:64;uniqueIndex;not null"`
	PasswordHash string `gorm:"size:100;not null"`
	Role         string `gorm:"size:16;not null"`
	Status       string `gorm:"size:16;not null;default:active"`
	// Profile, checked by the dataspace's access policies.
	Nationality string `gorm:"size:2"`  // ISO 3166-1 alpha-2
	Sector      string `gorm:"size:64"` // business sector (ODRL "industry")
	OrgType     string `gorm:"size:16"` // private | governmental | military | scientific | educational
	NonProfit   bool   `gorm:"not null;default:false"`
	ApprovedBy  string `gorm:"size:64"`
	ApprovedAt  *time.Time
	CreatedAt   time.Time
	UpdatedAt   time.Time
}

// PasswordReset is a one-time, expiring token that sets a user's password.
// Only its SHA-256 is stored.
type PasswordReset struct {
	ID        uint   `gorm:"primaryKey"`
	TokenHash string `gorm:"size:64;uniqueIndex;not null"`
	Username  string `gorm:"size:64;index;not null"`
	CreatedBy string `gorm:"size:64"`
	ExpiresAt time.Time
	UsedAt    *time.Time
	CreatedAt time.Time
}

// Setting is a console-wide persistent value, such as the JWT signing secret.
type Setting struct {
	Key   string `gorm:"primaryKey;size:64"`
	Value string `gorm:"not null"`
}

// EnrollmentToken is a one-time, expiring secret that lets one node enroll.
// Only its SHA-256 is stored.
type EnrollmentToken struct {
	ID          uint   `gorm:"primaryKey"`
	TokenHash   string `gorm:"size:64;uniqueIndex;not null"`
	Description string `gorm:"size:200"`
	CreatedBy   string `gorm:"size:64"`
	ExpiresAt   time.Time
	UsedAt      *time.Time
	UsedBy      string `gorm:"size:63"`
	CreatedAt   time.Time
}

// Node is an enrolled edge node. Liveness times are Unix microseconds so
// the offline sweep is one portable integer comparison in SQL.
type Node struct {
	ID             uint   `gorm:"primaryKey"`
	Name           string `gorm:"size:63;uniqueIndex;not null"`
	CredentialHash string `gorm:"size:64;not null"` // SHA-256 hex of the node's secret
	BrokerHash     string `gorm:"size:200"`         // the same secret hashed for Mosquitto's password file
	Arch           string `gorm:"size:32"`
	OS             string `gorm:"size:32"`
	Version        string `gorm:"size:64"`
	Labels         string `gorm:"type:text"` // JSON object
	Status         string `gorm:"size:16;index;not null;default:offline"`
	LastSeenUS     int64  `gorm:"not null;default:0"`
	HeartbeatUS    int64  `gorm:"not null;default:0"`
	StatusReason   string `gorm:"size:64"`
	StatusUS       int64  `gorm:"not null;default:0"` // when Status last changed
	LastTelemetry  string `gorm:"type:text"`          // JSON of the newest sample
	LastSampleUS   int64  `gorm:"not null;default:0"`
	Modules        string `gorm:"type:text"` // JSON digests the node reported compiled and ready
	EnrolledAt     time.Time
	CreatedAt      time.Time
	UpdatedAt      time.Time
}

// Sample is one stored telemetry sample: the figures an operator filters
// and charts on as columns, the whole message as JSON. (node_id, time_us) is
// unique, which is what makes a back-fill idempotent.
type Sample struct {
	ID           uint64   `gorm:"primaryKey"`
	NodeID       uint     `gorm:"not null;uniqueIndex:idx_samples_node_time,priority:1"`
	TimeUS       int64    `gorm:"not null;uniqueIndex:idx_samples_node_time,priority:2;index"`
	Seq          uint64   `gorm:"not null"`
	CPUPercent   float64  `gorm:"not null"`
	MemPercent   float64  `gorm:"not null"`
	PowerW       float64  `gorm:"not null"`
	EnergySource string   `gorm:"size:16"`
	BatteryPct   *float64 `gorm:""`
	SolarW       *float64 `gorm:""` // solar input, where the node has it
	Payload      string   `gorm:"type:text;not null"`
	ReceivedUS   int64    `gorm:"not null"`
}

// TableName keeps the table name explicit; it is part of the schema contract.
func (Sample) TableName() string { return "telemetry_samples" }

// Module is an uploaded cell module. Its bytes live in the object store
// under its digest; the row keeps what the validator learned about it.
type Module struct {
	ID             uint   `gorm:"primaryKey"`
	Digest         string `gorm:"size:64;uniqueIndex;not null"` // SHA-256 hex of the bytes
	Name           string `gorm:"size:63;index"`
	SizeBytes      int64  `gorm:"not null"`
	ABIVersion     int    `gorm:"not null;default:0"` // 0: known only by running it
	MemoryMinPages int64  `gorm:"not null"`
	MemoryMaxPages *int64
	Exports        string    `gorm:"type:text;not null"` // JSON [{"name","kind"}]
	Imports        string    `gorm:"type:text;not null"` // JSON [{"module","name","kind"}]
	UploadedBy     string    `gorm:"size:64"`
	UploadedAt     time.Time `gorm:"not null;index"`
}

// Migration is one applied schema step.
type Migration struct {
	Version   int `gorm:"primaryKey;autoIncrement:false"`
	Name      string
	AppliedAt time.Time
}

// TableName is fixed so migrations find their own table.
func (Migration) TableName() string { return "schema_migrations" }

// Cell is a cell the console wants run on one node. Spec is the
// protocol.CellSpec as JSON, exactly what the node's desired state lists;
// StatusJSON is the newest protocol.CellStatus the node reported for it and
// StatusUS when the console received it (Unix microseconds, 0: never).
type Cell struct {
	ID     string `gorm:"primaryKey;size:63"`
	Node   string `gorm:"size:63;index;not null"`
	Module string `gorm:"size:64;index;not null"`
	Spec   string `gorm:"type:text;not null"`
	App    string `gorm:"size:63;index"` // "" for a cell placed by hand
	// HeldOn is the source node of a migration in its restore phase: it
	// keeps the cell held (HeldSpec, with its Hold id) until the target runs
	// it, and its desired state lists it.
	HeldOn     string `gorm:"size:63;index"`
	HeldSpec   string `gorm:"type:text"`
	BoundUS    int64  `gorm:"not null;default:0"` // when the cell was bound to Node (minimum residence)
	CreatedBy  string `gorm:"size:64"`
	StatusJSON string `gorm:"type:text"`
	StatusUS   int64  `gorm:"not null;default:0"`
	CreatedAt  time.Time
	UpdatedAt  time.Time
}

// NodeDesired is the generation of a node's desired state, bumped in the
// same transaction as every change to the node's cells. A row exists once
// a node has had a desired state, even if its cells are all deleted since.
type NodeDesired struct {
	Node       string `gorm:"primaryKey;size:63"`
	Generation int64  `gorm:"not null;default:0"`
	UpdatedAt  time.Time
}

// TableName keeps the table name explicit; the generation bump names it in SQL.
func (NodeDesired) TableName() string { return "node_desired" }
