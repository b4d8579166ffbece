package ota

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cloudskin/cloudskin/shared/protocol"
)

// The download resumes with a Range request wherever it stopped: a
// dropped connection, a stalled one, a .part a previous process left (even
// a torn one), and copes with a console that ignores ranges.
func TestResumableDownload(t *testing.T) {
	const cut = 100_000
	cases := []struct {
		name string
		// setup prepares the console and the .part before the updater runs.
		setup func(r *rig, spec *protocol.UpdateSpec, b []byte)
		// ranges are the Range headers the console must see, in order.
		ranges func(size int64) []string
		// downloaded is how many bytes must have come over the wire.
		downloaded func(size int64) int64
	}{
		{
			name:       "connection dropped mid-way",
			setup:      func(r *rig, _ *protocol.UpdateSpec, _ []byte) { r.con.drops = []int64{cut} },
			ranges:     func(int64) []string { return []string{"", "bytes=" + strconv.Itoa(cut) + "-"} },
			downloaded: func(size int64) int64 { return size },
		},
		{
			name:       "connection stalled mid-way",
			setup:      func(r *rig, _ *protocol.UpdateSpec, _ []byte) { r.con.hangs = []int64{cut} },
			ranges:     func(int64) []string { return []string{"", "bytes=" + strconv.Itoa(cut) + "-"} },
			downloaded: func(size int64) int64 { return size },
		},
		{
			name: "dropped twice",
			setup: func(r *rig, _ *protocol.UpdateSpec, _ []byte) {
				r.con.drops = []int64{cut, cut}
			},
			ranges: func(int64) []string {
				return []string{"", "bytes=" + strconv.Itoa(cut) + "-", "bytes=" + strconv.Itoa(2*cut) + "-"}
			},
			downloaded: func(size int64) int64 { return size },
		},
		{
			name: "part left by a previous process",
			setup: func(r *rig, spec *protocol.UpdateSpec, b []byte) {
				writePart(r, spec, b[:cut])
			},
			ranges:     func(int64) []string { return []string{"bytes=" + strconv.Itoa(cut) + "-"} },
			downloaded: func(size int64) int64 { return size - cut },
		},
		{
			name: "torn part left by a power loss",
			setup: func(r *rig, spec *protocol.UpdateSpec, b []byte) {
				writePart(r, spec, make([]byte, cut)) // zeros, not the bundle
			},
			ranges:     func(int64) []string { return []string{"bytes=" + strconv.Itoa(cut) + "-", ""} },
			downloaded: func(size int64) int64 { return size - cut + size },
		},
		{
			name: "console ignores ranges",
			setup: func(r *rig, spec *protocol.UpdateSpec, b []byte) {
				r.con.drops = []int64{cut}
				r.con.noRange = true
			},
			ranges:     func(int64) []string { return []string{"", "bytes=" + strconv.Itoa(cut) + "-"} },
			downloaded: func(size int64) int64 { return cut + size },
		},
		{
			name: "part longer than the bundle",
			setup: func(r *rig, spec *protocol.UpdateSpec, b []byte) {
				writePart(r, spec, append(append([]byte(nil), b...), 1, 2, 3))
			},
			ranges:     func(int64) []string { return []string{""} },
			downloaded: func(size int64) int64 { return size },
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			b := makeBundle(t, "1.1.0", runtimeArch(), r.priv)
			spec := specFor("r1", b, "1.1.0")
			r.con.add(spec, b)
			tc.setup(r, spec, b)
			reg := prometheus.NewRegistry()
			u := r.process("1.0.0", r.factory, func(c *Config) {
				c.Registry = reg
				c.StallTimeout = 300 * time.Millisecond
			})
			_, done := r.run(u)
			u.Set(spec)
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				t.Fatalf("update did not finish: %+v", u.Status())
			}
			if s := u.Status(); s.Phase != protocol.UpdateRestarting || s.Progress != 1 {
				t.Fatalf("status %+v", s)
			}
			_, ranges := r.con.stats()
			want := tc.ranges(spec.Size)
			if len(ranges) != len(want) {
				t.Fatalf("ranges %q, want %q", ranges, want)
			}
			for i := range want {
				if ranges[i] != want[i] {
					t.Fatalf("ranges %q, want %q", ranges, want)
				}
			}
			if got, want := testutil.ToFloat64(u.m.downloaded), float64(tc.downloaded(spec.Size)); got != want {
				t.Fatalf("downloaded %v bytes, want %v", got, want)
			}
			if r.binaryIn(SlotA) != string(binaryFor("1.1.0")) {
				t.Fatal("slot a does not hold the release")
			}
		})
	}
}

func writePart(r *rig, spec *protocol.UpdateSpec, b []byte) {
	r.t.Helper()
	p := filepath.Join(r.dir, downloadDir, spec.Bundle+".part")
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		r.t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		r.t.Fatal(err)
	}
}
