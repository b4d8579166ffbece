// Package ota updates the agent over the air with two slots (A/B): it
// downloads a signed bundle (resumable), verifies it, installs it into the
// inactive slot, restarts into it and keeps it only if the new release
// passes its health check before a deadline; otherwise, or if it crashes
// repeatedly, the node goes back to the release it ran before by itself.
// docs/ota.md describes the state file, boot selection and every crash
// point.
package ota

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// Slot names. Factory is the binary the package installed (whatever
// executable the service manager starts); a and b are the two slots under
// DATA/ota/slots.
const (
	SlotFactory = "factory"
	SlotA       = "a"
	SlotB       = "b"
)

// Files under DATA/ota.
const (
	stateFile   = "state.json"
	slotsDir    = "slots"
	downloadDir = "download"
	// BinaryName is the agent binary inside a slot (and a bundle).
	BinaryName = "cloudskin-agent"
	newSuffix  = ".new"
)

// MaxTries is how many starts a release being tried gets before the boot
// selection calls it a crash loop and rolls back.
const MaxTries = 3

// State is DATA/ota/state.json: which slot runs, which one is being tried,
// and the outcome of the last update. It is written atomically (temporary
// file, fsync, rename, directory fsync) at every step, so a crash leaves
// the previous or the next version of it, never a torn one.
type State struct {
	// Active is the slot that runs when nothing is being tried.
	Active string `json:"active"`
	// Previous is the slot that was active before the last commit.
	Previous string `json:"previous,omitempty"`
	// Trying is the slot being tried ("" when none); Tries counts the
	// starts of it so far.
	Trying string `json:"trying,omitempty"`
	Tries  int    `json:"tries,omitempty"`
	// Version is the release in each slot (factory when known).
	Version map[string]string `json:"version,omitempty"`
	// Factory is the path of the packaged binary.
	Factory string `json:"factory,omitempty"`
	// Pending is the update being tried (with Trying).
	Pending *Pending `json:"pending,omitempty"`
	// Last is the outcome of the newest finished update; an update spec
	// with the same rollout and bundle is not acted on again.
	Last *Outcome `json:"last,omitempty"`
	// Notice is something the boot selection did on its own that the
	// agent has yet to report as an event (Outcome.Reported says the same
	// for Last).
	Notice string `json:"notice,omitempty"`
}

// Pending is the update a slot is being tried for.
type Pending struct {
	Rollout  string    `json:"rollout"`
	Bundle   string    `json:"bundle"`
	Version  string    `json:"version"`
	From     string    `json:"from,omitempty"` // the release that installed it
	Deadline time.Time `json:"deadline"`
}

// Outcome is how an update ended.
type Outcome struct {
	Rollout string    `json:"rollout"`
	Bundle  string    `json:"bundle"`
	Version string    `json:"version"`
	Phase   string    `json:"phase"` // committed, rolled-back, refused, failed
	Error   string    `json:"error,omitempty"`
	Slot    string    `json:"slot,omitempty"`
	Time    time.Time `json:"time"`
	// Reported is set once the event for this outcome is in the node's
	// event outbox.
	Reported bool `json:"reported,omitempty"`
}

func validSlot(s string) bool { return s == SlotA || s == SlotB }

// valid checks what boot selection relies on.
func (s *State) valid() error {
	if s.Active != SlotFactory && !validSlot(s.Active) {
		return fmt.Errorf("active slot %q", s.Active)
	}
	if s.Trying != "" && (!validSlot(s.Trying) || s.Trying == s.Active) {
		return fmt.Errorf("trying slot %q (active %q)", s.Trying, s.Active)
	}
	if s.Tries < 0 {
		return fmt.Errorf("tries %d", s.Tries)
	}
	return nil
}

// inactive is the slot an update installs into: never the active one
// (nor, since one update runs at a time, the one being tried).
func (s *State) inactive() string {
	if s.Active == SlotA {
		return SlotB
	}
	return SlotA
}

// errCorrupt marks a state file that exists but cannot be used.
var errCorrupt = errors.New("ota state corrupt")

// loadState reads dir/state.json. A missing file is a fresh state (the
// factory binary active); an unreadable or invalid one wraps errCorrupt.
func loadState(dir string) (State, error) {
	raw, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return State{Active: SlotFactory}, nil
	}
	if err != nil {
		return State{Active: SlotFactory}, fmt.Errorf("%w: %v", errCorrupt, err)
	}
	var s State
	if err := json.Unmarshal(raw, &s); err != nil {
		return State{Active: SlotFactory}, fmt.Errorf("%w: %v", errCorrupt, err)
	}
	if err := s.valid(); err != nil {
		return State{Active: SlotFactory}, fmt.Errorf("%w: %v", errCorrupt, err)
	}
	return s, nil
}

// saveState writes dir/state.json atomically and durably.
func saveState(dir string, s State) error {
	b, err := json.MarshalIndent(&s, "", "  ")
	if err != nil {
		return err
	}
	return writeFileSync(filepath.Join(dir, stateFile), b, 0o600)
}

// writeFileSync writes b to path through a synced temporary file renamed
// into place, then syncs the directory.
func writeFileSync(path string, b []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// slotBinary is the agent binary of slot in dir.
func slotBinary(dir, slot string) string {
	return filepath.Join(dir, slotsDir, slot, BinaryName)
}

// binaryOf is the binary that runs slot: the factory path or the slot's.
func (s *State) binaryOf(dir, slot string) string {
	if slot == SlotFactory {
		return s.Factory
	}
	return slotBinary(dir, slot)
}
