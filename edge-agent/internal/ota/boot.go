package ota

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	bundle "github.com/cloudskin/cloudskin/shared/ota"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// EnvBoot marks a process the boot selection exec'd into; its value is the
// slot. That process does not count the start again nor select again.
const EnvBoot = "CLOUDSKIN_OTA_BOOT"

// ErrRestart is returned by the agent when an update asks it to restart
// into the release the boot selection picks (Reexec).
var ErrRestart = errors.New("restart requested by the over-the-air update")

// slotManifest is the bundle manifest kept in an installed slot, so that
// boot selection can tell a complete slot from a torn one.
const slotManifest = "manifest.json"

// booter is the boot selection with its side effects injectable.
type booter struct {
	dir     string // DATA/ota
	version string // of the running binary
	log     *slog.Logger
	exe     string // the running executable
	exec    func(path string, argv, env []string) error
	now     func() time.Time
}

// Boot runs first in `cloudskin-agent run`, before anything else: it
// counts a start of a slot being tried (a crash loop rolls it back), and if
// the binary that should run is not this one it execs it with the same
// arguments and environment. It returns when this process is the one to
// run. It never fails the start: whatever goes wrong, a complete binary
// runs (this one, or the packaged one).
func Boot(dataDir, version string, log *slog.Logger) {
	if dataDir == "" {
		return
	}
	exe, err := os.Executable()
	if err != nil {
		log.Error("ota: cannot find the running executable; boot selection skipped", "err", err)
		return
	}
	if abs, err := filepath.Abs(dataDir); err == nil {
		dataDir = abs
	}
	b := &booter{dir: filepath.Join(dataDir, "ota"), version: version, log: log, exe: exe, exec: syscall.Exec, now: time.Now}
	b.boot(os.Args, os.Environ())
}

// Reexec restarts the agent in place (same pid, arguments and
// environment) through the packaged binary, so the boot selection picks
// the slot; if the packaged binary is unknown, through this one.
func Reexec(dataDir string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if st, err := loadState(filepath.Join(dataDir, "ota")); err == nil && st.Factory != "" {
		if _, err := os.Stat(st.Factory); err == nil {
			exe = st.Factory
		}
	}
	return syscall.Exec(exe, append([]string{exe}, os.Args[1:]...), withoutEnv(os.Environ(), EnvBoot))
}

func (b *booter) boot(args, env []string) {
	marker := lookupEnv(env, EnvBoot)
	os.Unsetenv(EnvBoot) // a later restart selects again
	cur := b.slotOf(b.exe)
	if marker != "" && marker == cur {
		return // the parent selected this binary and counted the start
	}
	st, target := b.selectSlot(cur)
	if target == cur {
		return
	}
	err := b.execSlot(st, target, args, env)
	b.log.Error("ota: cannot start the selected release", "slot", target, "err", err)
	if target == st.Trying {
		st.rollback(fmt.Sprintf("release %s (slot %s) could not be started: %v", st.versionOf(target), target, err), b.now())
		if err := saveState(b.dir, st); err != nil {
			b.log.Error("ota: state not saved", "err", err)
		}
		if st.Active != cur && (st.Active != SlotFactory || st.Factory != "") {
			err = b.execSlot(st, st.Active, args, env)
			b.log.Error("ota: cannot start the active release either; running this binary", "slot", st.Active, "err", err)
		}
	}
}

// selectSlot applies the boot rules, saves the state and names the slot
// to run.
func (b *booter) selectSlot(cur string) (State, string) {
	st, changed := b.decide(cur)
	target := st.Trying
	if target == "" {
		target = st.Active
	}
	if changed {
		if err := saveState(b.dir, st); err != nil {
			// An uncounted start of the release being tried could loop
			// for ever: without a durable count, run the active one.
			b.log.Error("ota: state not saved; running the active release", "err", err)
			target = st.Active
		}
	}
	if target == SlotFactory && st.Factory == "" {
		target = cur // the packaged binary is unknown: this one is complete
	}
	return st, target
}

// execSlot replaces this process with slot's binary; it returns only on
// failure.
func (b *booter) execSlot(st State, slot string, args, env []string) error {
	path := st.binaryOf(b.dir, slot)
	b.log.Info("ota: starting the selected release", "slot", slot, "version", st.versionOf(slot), "binary", path)
	argv := append([]string{path}, args[1:]...)
	return b.exec(path, argv, append(withoutEnv(env, EnvBoot), EnvBoot+"="+slot))
}

// decide reads the state and applies the boot rules; changed says whether
// the state must be saved before the selected release runs.
func (b *booter) decide(cur string) (st State, changed bool) {
	now := b.now()
	st, err := loadState(b.dir)
	if errors.Is(err, errCorrupt) {
		aside := filepath.Join(b.dir, stateFile+".corrupt")
		os.Rename(filepath.Join(b.dir, stateFile), aside)
		b.log.Error("ota: state file unusable; running the packaged agent", "err", err, "moved_to", aside)
		st = State{Active: SlotFactory, Notice: fmt.Sprintf("the update state was unusable (%v) and was reset: the packaged agent runs", err)}
		changed = true
	}
	// Leftovers of an extraction a crash interrupted.
	for _, s := range []string{SlotA, SlotB} {
		os.RemoveAll(filepath.Join(b.dir, slotsDir, s+newSuffix))
	}
	if cur == SlotFactory && st.Factory != b.exe {
		if _, err := os.Stat(filepath.Join(b.dir, stateFile)); err == nil || changed {
			st.Factory = b.exe
			changed = true
		}
	}
	if cur == SlotFactory && st.Factory == b.exe && b.version != "" && st.Version[SlotFactory] != b.version {
		if st.Version == nil {
			st.Version = map[string]string{}
		}
		st.Version[SlotFactory] = b.version
		changed = true
	}
	if st.Trying != "" {
		changed = true
		if err := slotComplete(b.dir, st.Trying); err != nil {
			st.rollback(fmt.Sprintf("release %s (slot %s) is incomplete: %v", st.versionOf(st.Trying), st.Trying, err), now)
			b.log.Error("ota: rolled back by the boot selection", "reason", st.Last.Error)
		} else if st.Tries++; st.Tries > MaxTries {
			st.rollback(fmt.Sprintf("crash loop: release %s (slot %s) started %d times without passing its health check", st.versionOf(st.Trying), st.Trying, st.Tries-1), now)
			b.log.Error("ota: rolled back by the boot selection", "reason", st.Last.Error)
		}
	}
	// A package upgrade newer than the active slot wins: otherwise the
	// node would ignore it until the next update.
	if st.Trying == "" && cur == SlotFactory && st.Active != SlotFactory && newer(b.version, st.versionOf(st.Active)) {
		st.Notice = fmt.Sprintf("the packaged agent %s (%s) is newer than slot %s's %s: it runs from now on", b.version, b.exe, st.Active, st.versionOf(st.Active))
		st.Previous, st.Active = st.Active, SlotFactory
		changed = true
		b.log.Warn("ota: " + st.Notice)
	}
	if st.Active != SlotFactory {
		if err := slotComplete(b.dir, st.Active); err != nil {
			st.Notice = fmt.Sprintf("slot %s is unusable (%v): the packaged agent runs", st.Active, err)
			st.Active = SlotFactory
			changed = true
			b.log.Error("ota: " + st.Notice)
		}
	}
	return st, changed
}

// slotOf names the slot whose binary path is; SlotFactory when it is none.
func (b *booter) slotOf(path string) string {
	return slotOfPath(b.dir, path)
}

func slotOfPath(dir, path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return SlotFactory
	}
	for _, s := range []string{SlotA, SlotB} {
		if si, err := os.Stat(slotBinary(dir, s)); err == nil && os.SameFile(fi, si) {
			return s
		}
	}
	return SlotFactory
}

// slotComplete checks that every file the slot's manifest lists is there
// with its size; files were synced before the slot was renamed into place,
// so this tells an installed slot from a torn or missing one.
func slotComplete(dir, slot string) error {
	root := filepath.Join(dir, slotsDir, slot)
	raw, err := os.ReadFile(filepath.Join(root, slotManifest))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return errors.New("not installed")
		}
		return err
	}
	var m bundle.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	for _, f := range m.Files {
		fi, err := os.Stat(filepath.Join(root, f.Name))
		if err != nil {
			return err
		}
		if fi.Size() != f.Size {
			return fmt.Errorf("%s has %d bytes, want %d", f.Name, fi.Size(), f.Size)
		}
	}
	fi, err := os.Stat(filepath.Join(root, BinaryName))
	if err != nil {
		return err
	}
	if fi.Mode().Perm()&0o100 == 0 {
		return fmt.Errorf("%s is not executable", BinaryName)
	}
	return nil
}

// rollback ends the update being tried: the active slot stays.
func (s *State) rollback(reason string, now time.Time) {
	o := &Outcome{Phase: protocol.UpdateRolledBack, Error: reason, Slot: s.Trying, Time: now.UTC()}
	if p := s.Pending; p != nil {
		o.Rollout, o.Bundle, o.Version = p.Rollout, p.Bundle, p.Version
	}
	s.Last, s.Trying, s.Tries, s.Pending = o, "", 0, nil
}

// commit keeps the slot being tried.
func (s *State) commit(now time.Time) {
	o := &Outcome{Phase: protocol.UpdateCommitted, Slot: s.Trying, Time: now.UTC()}
	if p := s.Pending; p != nil {
		o.Rollout, o.Bundle, o.Version = p.Rollout, p.Bundle, p.Version
	}
	s.Previous, s.Active = s.Active, s.Trying
	s.Last, s.Trying, s.Tries, s.Pending = o, "", 0, nil
}

func (s *State) versionOf(slot string) string {
	if v := s.Version[slot]; v != "" {
		return v
	}
	return "unknown"
}

// newer reports whether release a is newer than b; unparseable versions
// (a "dev" build) are never newer.
func newer(a, b string) bool {
	va, err := bundle.ParseVersion(a)
	if err != nil {
		return false
	}
	vb, err := bundle.ParseVersion(b)
	if err != nil {
		return false
	}
	return va.Compare(vb) > 0
}

func lookupEnv(env []string, key string) string {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			return v
		}
	}
	return ""
}

func withoutEnv(env []string, key string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if !strings.HasPrefix(kv, key+"=") {
			out = append(out, kv)
		}
	}
	return out
}
