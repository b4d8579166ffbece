package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// CredentialFile is where the node keeps what enrollment gave it.
const CredentialFile = "credential.json"

// Credential is the node's identity towards the console and the broker.
type Credential struct {
	Node        string    `json:"node"`
	Secret      string    `json:"credential"`
	BrokerURL   string    `json:"broker_url"`
	TopicPrefix string    `json:"topic_prefix"`
	Console     string    `json:"console"`
	EnrolledAt  time.Time `json:"enrolled_at"`
}

// errPermanent marks an enrollment the console refused: retrying is useless.
var errPermanent = errors.New("enrollment refused")

// loadOrEnroll returns the stored credential, or enrolls with the token
// (retrying while the console is unreachable) and stores the result.
func loadOrEnroll(ctx context.Context, cfg *Config, version string, log *slog.Logger) (*Credential, error) {
	path := filepath.Join(cfg.Data, CredentialFile)
	raw, err := os.ReadFile(path)
	if err == nil {
		var c Credential
		if err := json.Unmarshal(raw, &c); err != nil {
			return nil, fmt.Errorf("%s is damaged (%v): remove it and enroll again with a new token", path, err)
		}
		if c.Node != cfg.Name {
			return nil, fmt.Errorf("this data dir is enrolled as node %q, not %q: use --name %s or another --data", c.Node, cfg.Name, c.Node)
		}
		return &c, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	token := cfg.Token
	if token == "" && cfg.TokenFile != "" {
		b, err := os.ReadFile(cfg.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("token-file: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	if token == "" {
		return nil, fmt.Errorf("node %q is not enrolled: pass --token (or --token-file) with a token from `cloudskin-console token create` or POST /api/v1/tokens", cfg.Name)
	}
	backoff := time.Second
	for {
		c, err := enroll(ctx, cfg, token, version)
		if err == nil {
			if err := writeFileAtomic(path, c, 0o600); err != nil {
				return nil, fmt.Errorf("store credential: %w", err)
			}
			log.Info("enrolled with the console", "broker", c.BrokerURL)
			if cfg.TokenFile != "" {
				// The token is spent; do not leave it lying on the image.
				_ = os.Remove(cfg.TokenFile)
			}
			return c, nil
		}
		if errors.Is(err, errPermanent) {
			return nil, err
		}
		log.Warn("console unreachable for enrollment; retrying", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

func enroll(ctx context.Context, cfg *Config, token, version string) (*Credential, error) {
	body, _ := json.Marshal(map[string]any{
		"token": token, "name": cfg.Name, "arch": runtime.GOARCH, "os": runtime.GOOS,
		"version": version, "labels": cfg.Labels,
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(cfg.Console, "/")+"/api/v1/enroll", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := httpClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode >= 400 && resp.StatusCode < 500 {
		return nil, fmt.Errorf("%w by %s: %s %s", errPermanent, cfg.Console, resp.Status, apiMessage(raw))
	}
	if resp.StatusCode != http.StatusCreated {
		return nil, fmt.Errorf("console answered %s: %s", resp.Status, apiMessage(raw))
	}
	var c Credential
	if err := json.Unmarshal(raw, &c); err != nil || c.Secret == "" || c.BrokerURL == "" {
		return nil, fmt.Errorf("console sent an unusable enrollment answer: %v", err)
	}
	c.Console = cfg.Console
	c.EnrolledAt = time.Now().UTC()
	return &c, nil
}

// checkCredential asks the console who we are; a 401 means the node was
// removed or the credential replaced.
func checkCredential(ctx context.Context, cfg *Config, c *Credential) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(cfg.Console, "/")+"/api/v1/agent/whoami", nil)
	if err != nil {
		return err
	}
	req.SetBasicAuth(c.Node, c.Secret)
	resp, err := httpClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode == http.StatusUnauthorized {
		return fmt.Errorf("%w: the console no longer accepts this node's credential (%s)", errPermanent, apiMessage(raw))
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("whoami: %s %s", resp.Status, apiMessage(raw))
	}
	return nil
}

var httpClient = &http.Client{Timeout: 15 * time.Second}

func apiMessage(raw []byte) string {
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(raw, &e) == nil && e.Error != "" {
		return e.Error
	}
	if len(raw) > 200 {
		raw = raw[:200]
	}
	return string(raw)
}

// writeFileAtomic writes v as indented JSON to path, atomically.
func writeFileAtomic(path string, v any, mode os.FileMode) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = writeAtomic(path, mode, func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	})
	return err
}

// writeAtomic writes what write produces to path through a temporary file
// that is synced and renamed into place (the directory synced too), so a
// crash leaves the old file or the new, never a torn one. It returns the
// size written; on error nothing is left behind.
func writeAtomic(path string, mode os.FileMode, write func(io.Writer) error) (int64, error) {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return 0, err
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	err = write(bw)
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	size, _ := f.Seek(0, io.SeekCurrent)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return 0, err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return size, nil
}
