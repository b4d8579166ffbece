package e2e

import (
	"encoding/binary"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// windowBase is where the window cell's log starts (page 18; cells/window.wat).
const windowBase = 18 << 16

// stationMessages are the NREL RMIS readings (testdata/SOURCE.txt) as JSON
// sensor messages, about 330 bytes each.
func stationMessages(tb testing.TB) [][]byte {
	tb.Helper()
	f, err := os.Open("testdata/nrel_rmis_weather_5min_2022-01.csv")
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		tb.Fatal(err)
	}
	head := rows[0]
	var out [][]byte
	for _, r := range rows[1:] {
		var b strings.Builder
		fmt.Fprintf(&b, `{"station":"NREL-RMIS","time":%q`, r[0])
		for i := 1; i < len(r) && i < len(head); i++ {
			fmt.Fprintf(&b, `,%q:%s`, strings.ToLower(strings.ReplaceAll(head[i], " ", "_")), r[i])
		}
		b.WriteString("}")
		out = append(out, []byte(b.String()))
	}
	return out
}

// windowOutputs follows the window cell's outputs on one node: the time of
// the newest and of the first since reset, and the log size it reports.
type windowOutputs struct {
	mu         sync.Mutex
	first      time.Time
	last       time.Time
	size       uint32
	seen       atomic.Int64
	listenFrom time.Time
}

func (w *windowOutputs) reset() {
	w.mu.Lock()
	w.first, w.last, w.listenFrom = time.Time{}, time.Time{}, time.Now()
	w.mu.Unlock()
}

func (w *windowOutputs) get() (first, last time.Time, size uint32) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.first, w.last, w.size
}

func followWindow(tb testing.TB, sensors, cell string) *windowOutputs {
	tb.Helper()
	w := &windowOutputs{}
	sub := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + sensors).SetClientID("bench-out-" + strconv.FormatInt(time.Now().UnixNano(), 36)))
	if tok := sub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		tb.Fatalf("connect %s: %v", sensors, tok.Error())
	}
	tb.Cleanup(func() { sub.Disconnect(100) })
	sub.Subscribe("cells/"+cell+"/size", 0, func(_ paho.Client, m paho.Message) {
		now := time.Now()
		p := m.Payload()
		if len(p) != 12 {
			return
		}
		w.mu.Lock()
		if w.first.IsZero() {
			w.first = now
		}
		w.last, w.size = now, binary.LittleEndian.Uint32(p)
		w.mu.Unlock()
		w.seen.Add(1)
	}).Wait()
	return w
}

func sensorClient(tb testing.TB, sensors string) paho.Client {
	tb.Helper()
	c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + sensors).SetClientID("bench-in-" + strconv.FormatInt(time.Now().UnixNano(), 36)).
		SetMaxResumePubInFlight(256))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		tb.Fatalf("connect %s: %v", sensors, tok.Error())
	}
	tb.Cleanup(func() { c.Disconnect(100) })
	return c
}

// fillWindow publishes readings to a node until the cell's log holds size
// bytes. The cell's topic input is in memory and drops what overflows its
// queue, so it publishes in rounds until the log is full enough.
func fillWindow(tb testing.TB, pub paho.Client, w *windowOutputs, msgs [][]byte, size int) {
	tb.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for i := 0; ; {
		_, _, got := w.get()
		have := int(got) - windowBase
		if have >= size {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("window holds %d of %d bytes after 3 minutes", have, size)
		}
		var toks []paho.Token
		for sent := 0; sent < min(size-have, 4<<20); i++ {
			m := msgs[i%len(msgs)]
			toks = append(toks, pub.Publish("sensors/rmis", 1, false, m))
			sent += len(m) + 8
		}
		for _, t := range toks {
			t.Wait()
		}
		time.Sleep(100 * time.Millisecond) // the cell catches up with its queue
	}
}

// ticker publishes one reading every 5 ms to every node's sensor broker, so
// whichever node runs the cell shows its last and first outputs.
func ticker(pubs []paho.Client, msgs [][]byte) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			case <-t.C:
			}
			for _, p := range pubs {
				p.Publish("sensors/rmis", 0, false, msgs[i%len(msgs)])
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// BenchmarkMigrationDowntime moves a window cell holding 1, 16 and 64 MiB of
// state from an amd64 agent to another amd64 agent and to an arm64 agent
// (qemu), on loopback, through the console: downtime is the gap between the
// cell's last output on the source and its first on the target while a
// sensor publishes to both every 5 ms. The peer in the same run is what a
// stateless platform offers: delete the cell on the source and create it on
// the target (its module already compiled there), losing the state.
//
//	go test -run '^$' -bench MigrationDowntime -benchtime 1x -timeout 30m ./e2e/
func BenchmarkMigrationDowntime(b *testing.B) {
	msgs := stationMessages(b)
	for _, arch := range []string{"amd64", "arm64"} {
		b.Run("to="+arch, func(b *testing.B) {
			c := newConsole(b, backends[0], placementFlags...)
			jwt := c.login()
			src := newAgent(b, c, "src", c.token(jwt), "")
			var dst *agentEnv
			if arch == "arm64" {
				dst = newArm64Agent(b, c, "dst", c.token(jwt), "")
			} else {
				dst = newAgent(b, c, "dst", c.token(jwt), "")
			}
			for _, n := range []string{"src", "dst"} {
				waitFor(b, 2*time.Minute, n+" online", func() error {
					n, err := c.tryNode(jwt, n)
					if err != nil || n.Status != "online" {
						return fmt.Errorf("%+v %v", n, err)
					}
					return nil
				})
			}
			mod := uploadModule(b, c, jwt, "window", exampleCell(b, "window"))
			srcPub, dstPub := sensorClient(b, flagValue(src.args, "--sensors")), sensorClient(b, flagValue(dst.args, "--sensors"))
			for _, mib := range []int{1, 16, 64} {
				b.Run(fmt.Sprintf("state=%dMiB", mib), func(b *testing.B) {
					for i := 0; i < b.N; i++ {
						migrateWindow(b, c, jwt, mod, src, dst, srcPub, dstPub, msgs, mib, i)
					}
				})
			}
		})
	}
}

func migrateWindow(b *testing.B, c *consoleEnv, jwt, mod string, src, dst *agentEnv, srcPub, dstPub paho.Client, msgs [][]byte, mib, i int) {
	cell := fmt.Sprintf("win-%d-%d", mib, i)
	spec := map[string]any{
		"module": mod, "inputs": []map[string]any{{"name": "in", "topics": []string{"sensors/#"}}},
		"outputs": []string{"size"}, "limits": map[string]any{"memory_bytes": (mib + 40) << 20},
	}
	create := func(id, node string) {
		s := map[string]any{"id": id, "node": node}
		for k, v := range spec {
			s[k] = v
		}
		c.do("POST", "/api/v1/cells", jwt, s, 201, nil)
	}
	// Migration.
	create(cell, "src")
	outSrc, outDst := followWindow(b, flagValue(src.args, "--sensors"), cell), followWindow(b, flagValue(dst.args, "--sensors"), cell)
	waitCellRunning(b, c, jwt, cell, "src")
	fillWindow(b, srcPub, outSrc, msgs, mib<<20)
	stop := ticker([]paho.Client{srcPub, dstPub}, msgs)
	time.Sleep(200 * time.Millisecond)
	outSrc.reset()
	outDst.reset()
	b.ResetTimer()
	var resp struct {
		Move moveView `json:"move"`
	}
	c.do("POST", "/api/v1/cells/"+cell+"/migrate", jwt, map[string]any{"to": "dst"}, 202, &resp)
	mv := c.waitMove(b, jwt, resp.Move.ID, 5*time.Minute)
	waitFor(b, time.Minute, "first output on the target", func() error {
		if f, _, _ := outDst.get(); f.IsZero() {
			return fmt.Errorf("none yet")
		}
		return nil
	})
	b.StopTimer()
	stop()
	_, lastSrc, srcSize := outSrc.get()
	firstDst, _, dstSize := outDst.get()
	if dstSize < srcSize {
		b.Fatalf("the target's log (%d) is shorter than the source's (%d): state lost", dstSize, srcSize)
	}
	var ck struct {
		Checkpoints []struct {
			ID    string `json:"id"`
			Bytes int64  `json:"bytes"`
		} `json:"checkpoints"`
	}
	c.do("GET", "/api/v1/cells/"+cell+"/checkpoints", jwt, nil, 200, &ck)
	var snap int64
	for _, x := range ck.Checkpoints {
		if x.ID == mv.Checkpoint {
			snap = x.Bytes
		}
	}
	b.ReportMetric(float64(firstDst.Sub(lastSrc).Milliseconds()), "downtime-ms")
	b.ReportMetric(float64(snap)/(1<<20), "snapshot-MiB")
	b.ReportMetric(float64(mv.EndedAt.Sub(mv.StartedAt).Milliseconds()), "move-ms")
	c.do("DELETE", "/api/v1/cells/"+cell, jwt, nil, 204, nil)

	// Peer: a cold restart on the target, without the state.
	cold := fmt.Sprintf("cold-%d-%d", mib, i)
	create(cold, "src")
	coldSrc, coldDst := followWindow(b, flagValue(src.args, "--sensors"), cold), followWindow(b, flagValue(dst.args, "--sensors"), cold)
	waitCellRunning(b, c, jwt, cold, "src")
	stop = ticker([]paho.Client{srcPub, dstPub}, msgs)
	time.Sleep(200 * time.Millisecond)
	coldSrc.reset()
	c.do("DELETE", "/api/v1/cells/"+cold, jwt, nil, 204, nil)
	create(cold+"-b", "dst")
	coldDst2 := followWindow(b, flagValue(dst.args, "--sensors"), cold+"-b")
	waitFor(b, time.Minute, "first output of the cold cell", func() error {
		if f, _, _ := coldDst2.get(); f.IsZero() {
			return fmt.Errorf("none yet")
		}
		return nil
	})
	stop()
	_, lastCold, _ := coldSrc.get()
	firstCold, _, _ := coldDst2.get()
	_ = coldDst
	b.ReportMetric(float64(firstCold.Sub(lastCold).Milliseconds()), "cold-restart-ms")
	c.do("DELETE", "/api/v1/cells/"+cold+"-b", jwt, nil, 204, nil)
}

func waitCellRunning(tb testing.TB, c *consoleEnv, jwt, cell, node string) {
	tb.Helper()
	waitFor(tb, 3*time.Minute, cell+" running on "+node, func() error {
		var v cellView
		if code, raw := c.request("GET", "/api/v1/cells/"+cell, jwt, nil); code != 200 || json.Unmarshal(raw, &v) != nil {
			return fmt.Errorf("GET cell: %d %s", code, raw)
		}
		if v.Node != node || v.Status == nil || v.Status.State != "running" {
			return fmt.Errorf("on %s, status %+v", v.Node, v.Status)
		}
		return nil
	})
}
