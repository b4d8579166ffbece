package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cloudskin/cloudskin/shared/protocol"
	"github.com/cloudskin/cloudskin/shared/testenv"
)

// consoleStream reads a stream's reported figures through the console.
func (c *consoleEnv) consoleStream(jwt, node, stream string) (protocol.StreamStatus, error) {
	var st protocol.StreamStatus
	code, raw := c.request("GET", "/api/v1/nodes/"+node+"/streams/"+stream, jwt, nil)
	if code != 200 {
		return st, fmt.Errorf("GET stream: %d %s", code, raw)
	}
	return st, json.Unmarshal(raw, &st)
}

type recordsPage struct {
	Records []protocol.StreamRecord `json:"records"`
	Next    uint64                  `json:"next"`
	Source  string                  `json:"source"`
}

// consoleRecords reads a whole stream through the console, from offset 1,
// and counts the records each source served.
func (c *consoleEnv) consoleRecords(t *testing.T, jwt, node, stream string) ([]protocol.StreamRecord, map[string]int) {
	t.Helper()
	var all []protocol.StreamRecord
	sources := map[string]int{}
	for from := uint64(1); ; {
		var p recordsPage
		code, raw := c.request("GET", fmt.Sprintf("/api/v1/nodes/%s/streams/%s/records?from=%d&limit=500", node, stream, from), jwt, nil)
		if code != 200 || json.Unmarshal(raw, &p) != nil {
			t.Fatalf("records from %d: %d %s", from, code, raw)
		}
		if len(p.Records) == 0 {
			return all, sources
		}
		sources[p.Source] += len(p.Records)
		all = append(all, p.Records...)
		from = p.Next
	}
}

// mosquittoPub publishes each line as one QoS 1 message with the real
// mosquitto_pub client.
func mosquittoPub(t *testing.T, hostport, topic string, lines []string) {
	t.Helper()
	host, port, _ := strings.Cut(hostport, ":")
	cmd := exec.Command("mosquitto_pub", "-h", host, "-p", port, "-q", "1", "-t", topic, "-l")
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_pub: %v: %s", err, out)
	}
}

func readings(from, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf(`{"sensor":"t1","value":%d}`, from+i)
	}
	return out
}

// TestStreamSpillOutage is the streams issue's "done when" on a running
// edge-1 whose console keeps spilled segments in a real S3 server
// (versitygw): mosquitto_pub writes into a stream the console declared, the
// aggregator consumes it through its cursor, stopping S3 grows the upload
// backlog without loss, starting it again drains it, spilled records read
// back through the console API, and a cell deployed after the node deleted
// its local copy reads the old records back from the cloud (rehydration).
func TestStreamSpillOutage(t *testing.T) {
	s3 := testenv.NewS3(t)
	c := newConsole(t, backends[0], "--s3-endpoint", s3.Endpoint, "--s3-bucket", s3.Bucket,
		"--s3-access-key", s3.AccessKey, "--s3-secret-key", s3.SecretKey, "--s3-region", s3.Region)
	jwt := c.login()
	a := newAgent(t, c, "edge-1", c.token(jwt), "")
	sensors := flagValue(a.args, "--sensors")
	waitStatus(t, c, jwt, "edge-1", "online", 15*time.Second)

	// A stream declared by the console: small segments sealed after a second,
	// local copies kept 2 s once spilled.
	c.do("PUT", "/api/v1/nodes/edge-1/streams/sensors", jwt, map[string]any{
		"topics": []string{"sensors/#"}, "spill": true, "segment_bytes": 4096, "seal_seconds": 1,
		"retention_seconds": 2,
	}, 200, nil)
	agg := uploadModule(t, c, jwt, "aggregator", buildCell(t, "aggregator"))
	c.do("POST", "/api/v1/cells", jwt, map[string]any{
		"id": "agg", "node": "edge-1", "module": agg,
		"inputs":  []map[string]any{{"name": "sensors", "stream": "sensors"}},
		"outputs": []string{"aggregates"},
	}, 201, nil)
	waitFor(t, 30*time.Second, "stream reported", func() error { _, err := c.consoleStream(jwt, "edge-1", "sensors"); return err })

	const first, second = 300, 200
	mosquittoPub(t, sensors, "sensors/field-3/t1", readings(0, first))
	waitAggregate(t, c, jwt, "agg", first, 0, first-1)
	waitFor(t, 30*time.Second, "first records spilled", func() error {
		st, err := c.consoleStream(jwt, "edge-1", "sensors")
		if err != nil {
			return err
		}
		if st.SpilledThrough < first/2 {
			return fmt.Errorf("spilled through %d, backlog %d B, error %q", st.SpilledThrough, st.BacklogBytes, st.LastUploadError)
		}
		return nil
	})

	// Outage: the object store goes away; ingestion and the cell carry on and
	// the backlog grows.
	s3.Stop()
	mosquittoPub(t, sensors, "sensors/field-3/t1", readings(first, second))
	waitAggregate(t, c, jwt, "agg", first+second, 0, first+second-1)
	waitFor(t, 30*time.Second, "backlog during the outage", func() error {
		st, err := c.consoleStream(jwt, "edge-1", "sensors")
		if err != nil {
			return err
		}
		if st.BacklogBytes == 0 || st.LastUploadError == "" || st.OldestUnspilledAgeSeconds < 1 {
			return fmt.Errorf("backlog %d B, error %q, oldest %.1fs", st.BacklogBytes, st.LastUploadError, st.OldestUnspilledAgeSeconds)
		}
		return nil
	})
	if a.metric("cloudskin_agent_stream_upload_failing", `stream="sensors"`) != 1 {
		t.Error("upload_failing metric is not 1 during the outage")
	}

	// Back: the backlog drains, oldest first.
	s3.Start()
	waitFor(t, 90*time.Second, "backlog drained", func() error {
		st, err := c.consoleStream(jwt, "edge-1", "sensors")
		if err != nil {
			return err
		}
		if st.SpilledThrough != st.NextOffset || st.LastUploadError != "" {
			return fmt.Errorf("spilled through %d of %d, error %q", st.SpilledThrough, st.NextOffset, st.LastUploadError)
		}
		return nil
	})

	// Every record reads back through the console, from the cloud tier, in order
	// and unchanged.
	recs, sources := c.consoleRecords(t, jwt, "edge-1", "sensors")
	if len(recs) != first+second {
		t.Fatalf("read back %d records (sources %v), want %d", len(recs), sources, first+second)
	}
	want := readings(0, first+second)
	for i, r := range recs {
		if r.Offset != uint64(i+1) || !bytes.Equal(r.Payload, []byte(want[i])) || r.Topic != "sensors/field-3/t1" {
			t.Fatalf("record %d: offset %d topic %s payload %s, want %s", i, r.Offset, r.Topic, r.Payload, want[i])
		}
	}
	if sources["cloud"] == 0 {
		t.Fatalf("nothing was read from the cloud tier: %v", sources)
	}

	// Once retention removed the local copies, a new cell reads the whole
	// stream from its start: the agent fetches spilled segments back.
	waitFor(t, 30*time.Second, "local copies expired", func() error {
		st, err := c.consoleStream(jwt, "edge-1", "sensors")
		if err != nil {
			return err
		}
		if st.FirstLocal <= uint64(first) {
			return fmt.Errorf("first local offset %d", st.FirstLocal)
		}
		return nil
	})
	c.do("POST", "/api/v1/cells", jwt, map[string]any{
		"id": "agg-late", "node": "edge-1", "module": agg,
		"inputs":  []map[string]any{{"name": "sensors", "stream": "sensors"}},
		"outputs": []string{"aggregates"},
	}, 201, nil)
	waitAggregate(t, c, jwt, "agg-late", first+second, 0, first+second-1)
	if a.proc.Exited() {
		t.Fatal("the agent exited")
	}
}

func uploadModule(t testing.TB, c *consoleEnv, jwt, name string, wasm []byte) string {
	t.Helper()
	code, _, raw := c.upload("?name="+name, jwt, bytes.NewReader(wasm))
	var mod struct {
		Digest string `json:"digest"`
	}
	if (code != 201 && code != 200) || json.Unmarshal(raw, &mod) != nil || len(mod.Digest) != 64 {
		t.Fatalf("upload %s: %d %s", name, code, raw)
	}
	return mod.Digest
}

// waitAggregate waits until cell's latest output says count/min/max.
func waitAggregate(t *testing.T, c *consoleEnv, jwt, cell string, count int, minV, maxV float64) {
	t.Helper()
	waitFor(t, 60*time.Second, fmt.Sprintf("%s counts %d", cell, count), func() error {
		var v cellView
		_, raw := c.request("GET", "/api/v1/cells/"+cell, jwt, nil)
		if err := json.Unmarshal(raw, &v); err != nil || v.Status == nil || len(v.Status.RecentOutputs) == 0 {
			return fmt.Errorf("%s", raw)
		}
		var agg struct {
			Count int     `json:"count"`
			Min   float64 `json:"min"`
			Max   float64 `json:"max"`
		}
		out := v.Status.RecentOutputs[len(v.Status.RecentOutputs)-1]
		if err := json.Unmarshal(out.Payload, &agg); err != nil {
			return err
		}
		if agg.Count != count || agg.Min != minV || agg.Max != maxV {
			return fmt.Errorf("latest aggregate %s", out.Payload)
		}
		return nil
	})
}

// TestLocalStreamSpills: a stream from the agent's own configuration (a node
// that must start offline) spills like a console-declared one.
func TestLocalStreamSpills(t *testing.T) {
	c := newConsole(t, backends[0])
	jwt := c.login()
	a := newAgent(t, c, "edge-1", c.token(jwt), "",
		"--stream", `{"name":"local","topics":["local/#"],"spill":true,"segment_bytes":65536,"seal_seconds":1}`)
	waitStatus(t, c, jwt, "edge-1", "online", 10*time.Second)
	mosquittoPub(t, flagValue(a.args, "--sensors"), "local/t1", readings(0, 200))
	waitFor(t, 30*time.Second, "the local stream spilled", func() error {
		st, err := c.consoleStream(jwt, "edge-1", "local")
		if err != nil {
			return err
		}
		if st.SpilledThrough < 200 {
			return fmt.Errorf("spilled through %d, backlog %d B, error %q", st.SpilledThrough, st.BacklogBytes, st.LastUploadError)
		}
		return nil
	})
	recs, sources := c.consoleRecords(t, jwt, "edge-1", "local")
	if len(recs) != 200 || sources["cloud"] == 0 {
		t.Fatalf("read back %d records, sources %v", len(recs), sources)
	}
}
