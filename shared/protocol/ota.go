package protocol

import (
	"regexp"
	"time"
)

// UpdateSpec, in a node's desired state, asks the agent to run a release:
// download the bundle (resumable), verify it against the release key it
// trusts, install it into its inactive slot, restart into it and keep it
// only if it passes its health check within HealthSeconds.
type UpdateSpec struct {
	Rollout string `json:"rollout"`
	Bundle  string `json:"bundle"`  // the bundle's id: sha256 hex of the bundle file
	Version string `json:"version"` // the release it carries
	// URL is where the node downloads the bundle: a path on the console
	// (/api/v1/bundles/{id}/blob, node credentials, Range supported).
	URL    string `json:"url"`
	SHA256 string `json:"sha256"` // of the whole bundle file (= Bundle)
	Size   int64  `json:"size"`
	// HealthSeconds is how long the new release has to reconnect to the
	// console and run its cells before the node rolls back by itself.
	HealthSeconds int `json:"health_seconds"`
}

// Update phases an agent reports (UpdateStatus.Phase).
const (
	UpdateDownloading = "downloading"
	UpdateVerifying   = "verifying"
	UpdateInstalling  = "installing"
	UpdateRestarting  = "restarting"
	UpdateChecking    = "checking"    // running the new release, health check under way
	UpdateCommitted   = "committed"   // the new release passed and is kept
	UpdateRolledBack  = "rolled-back" // the node went back to its previous release (Error says why)
	UpdateRefused     = "refused"     // the bundle failed verification (Error says why)
	UpdateFailed      = "failed"      // download or install failed for good
)

// UpdateStatus, in a node's actual state, is where its update stands.
type UpdateStatus struct {
	Rollout  string    `json:"rollout"`
	Bundle   string    `json:"bundle"`
	Version  string    `json:"version"` // the release the update brings
	Running  string    `json:"running"` // the release running now
	Slot     string    `json:"slot"`    // "a", "b" or "factory" (the packaged binary)
	Phase    string    `json:"phase"`
	Error    string    `json:"error,omitempty"`
	Progress float64   `json:"progress,omitempty"` // downloaded share, 0..1
	Time     time.Time `json:"time"`
}

var bundleIDRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// Validate checks an update spec's shape.
func (u *UpdateSpec) Validate() error {
	switch {
	case !bundleIDRE.MatchString(u.Bundle) || u.SHA256 != u.Bundle:
		return invalid("update: bundle %q is not a sha256 hex digest equal to sha256", u.Bundle)
	case u.Version == "" || len(u.Version) > 80:
		return invalid("update: version %q", u.Version)
	case u.URL == "" || len(u.URL) > 512 || u.URL[0] != '/':
		return invalid("update: url %q must be a path on the console", u.URL)
	case u.Size <= 0 || u.Size > 1<<30:
		return invalid("update: size %d", u.Size)
	case u.HealthSeconds < 5 || u.HealthSeconds > 3600:
		return invalid("update: health_seconds %d must be 5..3600", u.HealthSeconds)
	case len(u.Rollout) > 80:
		return invalid("update: rollout id too long")
	}
	return nil
}
