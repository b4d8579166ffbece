package ota

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bundle "github.com/cloudskin/cloudskin/shared/ota"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// The test binary doubles as the agent binary of the exec tests: with
// OTA_BOOT_HELPER set it runs the boot selection and says where it ended.
func TestMain(m *testing.M) {
	if os.Getenv("OTA_BOOT_HELPER") != "" {
		Boot(os.Getenv("OTA_DATA"), os.Getenv("OTA_VERSION"), slog.New(slog.NewTextHandler(os.Stderr, nil)))
		exe, _ := os.Executable()
		fmt.Printf("running %s marker=%q\n", exe, os.Getenv(EnvBoot))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// installFake puts content as slot's binary, with the manifest that marks
// the slot complete.
func installFake(t *testing.T, dir, slot string, content []byte, version string) {
	t.Helper()
	root := filepath.Join(dir, slotsDir, slot)
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, BinaryName), content, 0o755); err != nil {
		t.Fatal(err)
	}
	m := bundle.Manifest{Product: bundle.Product, Version: version, Arch: runtimeArch(),
		Files: []bundle.File{{Name: BinaryName, Size: int64(len(content)), Mode: 0o755}}}
	b, _ := json.Marshal(&m)
	if err := os.WriteFile(filepath.Join(root, slotManifest), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func quietBooter(dir, version, exe string) *booter {
	return &booter{dir: dir, version: version, log: slog.New(slog.NewTextHandler(io.Discard, nil)), exe: exe, now: time.Now,
		exec: func(string, []string, []string) error { return fmt.Errorf("exec not expected in this test") }}
}

// Boot selection against states a crash, a bad disk or an operator may
// leave.
func TestBootSelection(t *testing.T) {
	cases := []struct {
		name    string
		version string // of the packaged binary
		state   string // state.json ("" none)
		slots   map[string]string
		want    string // slot to run
		check   func(t *testing.T, st State)
	}{
		{name: "no state", version: "1.0.0", want: SlotFactory},
		{name: "corrupt state", version: "1.0.0", state: `{"active": "a", "trying`, slots: map[string]string{SlotA: "1.1.0"}, want: SlotFactory,
			check: func(t *testing.T, st State) {
				if !strings.Contains(st.Notice, "unusable") {
					t.Fatalf("notice %q", st.Notice)
				}
			}},
		{name: "invalid state", version: "1.0.0", state: `{"active": "c"}`, want: SlotFactory},
		{name: "active slot", version: "1.0.0", state: `{"active": "a", "version": {"a": "1.1.0"}}`, slots: map[string]string{SlotA: "1.1.0"}, want: SlotA},
		{name: "active slot missing", version: "1.0.0", state: `{"active": "b", "previous": "a"}`, slots: map[string]string{SlotA: "1.1.0"}, want: SlotFactory,
			check: func(t *testing.T, st State) {
				if st.Active != SlotFactory || !strings.Contains(st.Notice, "slot b is unusable") {
					t.Fatalf("state %+v", st)
				}
			}},
		{name: "trying counted", version: "1.0.0", state: `{"active": "a", "trying": "b", "tries": 1, "version": {"a": "1.1.0", "b": "1.2.0"}}`,
			slots: map[string]string{SlotA: "1.1.0", SlotB: "1.2.0"}, want: SlotB,
			check: func(t *testing.T, st State) {
				if st.Tries != 2 {
					t.Fatalf("tries %d", st.Tries)
				}
			}},
		{name: "trying incomplete", version: "1.0.0", state: `{"active": "a", "trying": "b", "pending": {"rollout": "r", "version": "1.2.0"}}`,
			slots: map[string]string{SlotA: "1.1.0"}, want: SlotA,
			check: func(t *testing.T, st State) {
				if st.Trying != "" || st.Last.Phase != protocol.UpdateRolledBack || !strings.Contains(st.Last.Error, "incomplete") || st.Last.Rollout != "r" {
					t.Fatalf("state %+v last %+v", st, st.Last)
				}
			}},
		{name: "crash loop", version: "1.0.0", state: `{"active": "factory", "trying": "a", "tries": 3, "version": {"a": "1.1.0"}}`,
			slots: map[string]string{SlotA: "1.1.0"}, want: SlotFactory,
			check: func(t *testing.T, st State) {
				if st.Trying != "" || !strings.Contains(st.Last.Error, "crash loop") {
					t.Fatalf("state %+v", st)
				}
			}},
		{name: "package upgraded past the active slot", version: "1.3.0", state: `{"active": "a", "version": {"a": "1.1.0"}}`,
			slots: map[string]string{SlotA: "1.1.0"}, want: SlotFactory,
			check: func(t *testing.T, st State) {
				if st.Active != SlotFactory || st.Previous != SlotA || !strings.Contains(st.Notice, "newer") {
					t.Fatalf("state %+v", st)
				}
			}},
		{name: "dev package never wins", version: "dev", state: `{"active": "a", "version": {"a": "1.1.0"}}`,
			slots: map[string]string{SlotA: "1.1.0"}, want: SlotA},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "ota")
			os.MkdirAll(dir, 0o700)
			for slot, v := range tc.slots {
				installFake(t, dir, slot, binaryFor(v), v)
			}
			// A crash during an extraction leaves this behind.
			os.MkdirAll(filepath.Join(dir, slotsDir, SlotB+newSuffix), 0o700)
			if tc.state != "" {
				os.WriteFile(filepath.Join(dir, stateFile), []byte(tc.state), 0o600)
			}
			factory := filepath.Join(t.TempDir(), BinaryName)
			os.WriteFile(factory, binaryFor(tc.version), 0o755)
			st, target := quietBooter(dir, tc.version, factory).selectSlot(SlotFactory)
			if target != tc.want {
				t.Fatalf("target %s, want %s (state %+v)", target, tc.want, st)
			}
			if target != SlotFactory {
				if err := slotComplete(dir, target); err != nil {
					t.Fatalf("incomplete slot selected: %v", err)
				}
			}
			if _, err := os.Stat(filepath.Join(dir, slotsDir, SlotB+newSuffix)); !os.IsNotExist(err) {
				t.Fatal("leftover extraction not removed")
			}
			if tc.state != "" || tc.want != SlotFactory {
				saved, err := loadState(dir)
				if err != nil {
					t.Fatal(err)
				}
				if saved.Factory != factory {
					t.Fatalf("factory %q not recorded", saved.Factory)
				}
				if tc.check != nil {
					tc.check(t, saved)
				}
			}
		})
	}
}

// The real exec: the packaged binary execs the slot being tried, which
// runs without counting the start again; a slot that cannot be executed
// is rolled back and the active one runs instead.
func TestBootExec(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	run := func(t *testing.T, data, factory string) string {
		t.Helper()
		cmd := exec.Command(factory, "run", "--data", data)
		cmd.Env = append(os.Environ(), "OTA_BOOT_HELPER=1", "OTA_DATA="+data, "OTA_VERSION=1.0.0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		return string(out)
	}
	setup := func(t *testing.T, state State) (data, dir, factory string) {
		data = t.TempDir()
		dir = filepath.Join(data, "ota")
		factory = filepath.Join(t.TempDir(), BinaryName)
		if err := os.WriteFile(factory, bin, 0o755); err != nil {
			t.Fatal(err)
		}
		state.Factory = factory
		if err := saveState(dir, state); err != nil {
			t.Fatal(err)
		}
		return data, dir, factory
	}

	t.Run("trying slot", func(t *testing.T) {
		data, dir, factory := setup(t, State{Active: SlotFactory, Trying: SlotA, Pending: &Pending{Version: "1.1.0"}})
		installFake(t, dir, SlotA, bin, "1.1.0")
		out := run(t, data, factory)
		if !strings.Contains(out, "running "+slotBinary(dir, SlotA)+` marker=""`) {
			t.Fatalf("output: %s", out)
		}
		st, _ := loadState(dir)
		if st.Tries != 1 || st.Trying != SlotA {
			t.Fatalf("state %+v", st)
		}
	})
	t.Run("slot not executable", func(t *testing.T) {
		data, dir, factory := setup(t, State{Active: SlotA, Trying: SlotB, Version: map[string]string{SlotA: "1.1.0", SlotB: "1.2.0"},
			Pending: &Pending{Rollout: "r2", Version: "1.2.0"}})
		installFake(t, dir, SlotA, bin, "1.1.0")
		installFake(t, dir, SlotB, []byte("\x7fELF but not really an executable"), "1.2.0")
		out := run(t, data, factory)
		if !strings.Contains(out, "running "+slotBinary(dir, SlotA)) {
			t.Fatalf("output: %s", out)
		}
		st, _ := loadState(dir)
		if st.Trying != "" || st.Active != SlotA || st.Last == nil || st.Last.Phase != protocol.UpdateRolledBack ||
			!strings.Contains(st.Last.Error, "could not be started") || st.Last.Rollout != "r2" {
			t.Fatalf("state %+v last %+v", st, st.Last)
		}
	})
	t.Run("nothing to do", func(t *testing.T) {
		data, _, factory := setup(t, State{Active: SlotFactory})
		if out := run(t, data, factory); !strings.Contains(out, "running "+factory) {
			t.Fatalf("output: %s", out)
		}
	})
}
