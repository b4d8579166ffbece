// Relay shows a tissue: cells of one app sending to each other by name
// wherever they run. Config:
//
//	{"to":"counter"}
//
// With "to" set, every record of its inputs is sent, as is, to that cell of
// the app (cloudskin.send). Every cell running this module also counts what
// other cells send it (input "tissue", the sender's name as the topic) and
// emits after each batch, to output "received":
//
//	{"count":12,"last":{"relay":12},"gaps":0,"repeats":0}
//
// where last is the newest message number taken from each sender (a record's
// offset), gaps counts numbers skipped and repeats numbers seen again: the
// host delivers each sender's messages in order and once, so both stay 0.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/cloudskin/cloudskin/shared/cellsdk"
)

const tissueInput = "tissue"

type config struct {
	To string `json:"to"`
}

type received struct {
	Count   uint64            `json:"count"`
	Last    map[string]uint64 `json:"last"`
	Gaps    uint64            `json:"gaps"`
	Repeats uint64            `json:"repeats"`
}

var (
	cfg   config
	state = received{Last: map[string]uint64{}}
)

func init() {
	cellsdk.Init(configure)
	cellsdk.Handle(handle)
}

func main() {}

func configure(raw []byte) error {
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return nil
}

func handle(b cellsdk.Batch) error {
	if b.Input != tissueInput {
		if cfg.To == "" {
			return nil
		}
		for _, r := range b.Records {
			if err := cellsdk.Send(cfg.To, r.Payload); err != nil {
				return fmt.Errorf("send to %s: %w", cfg.To, err)
			}
		}
		return nil
	}
	for _, r := range b.Records {
		last := state.Last[r.Topic]
		switch {
		case r.Offset <= last:
			state.Repeats++
		case r.Offset > last+1:
			state.Gaps += r.Offset - last - 1
		}
		if r.Offset > last {
			state.Last[r.Topic] = r.Offset
		}
		state.Count++
	}
	out, err := json.Marshal(state)
	if err != nil {
		return err
	}
	return cellsdk.Emit("received", out)
}
