// Command oneshot is the process-per-event peer of the cells benchmarks: a fresh process
// loads one module through cells.Runtime (compiled code from the cache dir), starts the
// cell, hands it the one event read from stdin, writes what the cell emits to stdout and
// exits. It is the container-per-task design with the container taken away, so it is a
// floor for that design, not its full cost.
//
// With -hold it starts the cell, prints "ready" and waits for stdin to close instead: an
// idle cell that costs a whole process, for the RSS comparison.
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/cloudskin/cloudskin/edge-agent/internal/cells"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "oneshot:", err)
		os.Exit(1)
	}
}

func run() error {
	module := flag.String("module", "", "path to the cell's .wasm")
	cache := flag.String("cache", "", "compiled-code cache dir")
	topic := flag.String("topic", "sensors/t1", "topic of the event")
	outputs := flag.String("outputs", "count,aggregates", "the cell's declared outputs, comma-separated")
	digest := flag.String("digest", "", "the module's sha256: load it from the compiled-code cache without reading the .wasm, as the agent does")
	hold := flag.Bool("hold", false, "start the cell, print ready, wait for stdin to close")
	flag.Parse()

	rt, err := cells.NewRuntime(*cache, nil)
	if err != nil {
		return err
	}
	defer rt.Close()
	m, err := load(rt, *module, *digest)
	if err != nil {
		return err
	}
	defer m.Close()

	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	out := func(stream string, data []byte) {
		w.WriteString(stream)
		w.WriteByte(' ')
		w.Write(data)
		w.WriteByte('\n')
	}
	spec := cells.Spec{ID: "oneshot", Limits: cells.Limits{MaxOutputPerSec: 1e12}, Outputs: strings.Split(*outputs, ",")}
	ctx := context.Background()
	c, err := rt.Start(ctx, m, spec, out)
	if err != nil {
		return err
	}
	defer c.Close()

	if *hold {
		fmt.Fprintln(os.Stdout, "ready")
		_, err := io.Copy(io.Discard, os.Stdin)
		return err
	}
	payload, err := io.ReadAll(os.Stdin)
	if err != nil {
		return err
	}
	rec := cells.Record{Offset: 0, TimeNS: time.Now().UnixNano(), Topic: *topic, Payload: payload}
	return c.Handle(ctx, "in", []cells.Record{rec})
}

func load(rt *cells.Runtime, path, digest string) (*cells.Module, error) {
	if digest != "" {
		m, err := rt.LoadCached(digest)
		if !errors.Is(err, cells.ErrNotCached) {
			return m, err
		}
	}
	wasm, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(wasm)
	return rt.Load(wasm, hex.EncodeToString(sum[:]))
}
