// Package config loads a binary's configuration from, in increasing order of
// precedence: defaults in code, an optional YAML file, CLOUDSKIN_* environment
// variables, and command-line flags. Both binaries use it so operators get the
// same rules everywhere.
package config

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"gopkg.in/yaml.v3"
)

// EnvPrefix starts every environment variable a flag can be set from:
// flag --broker-url is CLOUDSKIN_BROKER_URL.
const EnvPrefix = "CLOUDSKIN_"

// EnvName is the environment variable that sets flag name.
func EnvName(flagName string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Load fills cfg. It reads --config (or CLOUDSKIN_CONFIG) first and decodes
// that YAML file strictly into cfg, then calls define so the flags are bound
// to cfg's fields with the file's values as their defaults, then applies the
// environment, then parses args.
func Load(fs *flag.FlagSet, args []string, cfg any, define func(fs *flag.FlagSet)) error {
	path := os.Getenv(EnvName("config"))
	if p, ok := findFlag(args, "config"); ok {
		path = p
	}
	if path != "" {
		if err := decodeFile(path, cfg); err != nil {
			return err
		}
	}
	var ignored string
	fs.StringVar(&ignored, "config", path, "YAML configuration file (env "+EnvName("config")+")")
	define(fs)
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "config" {
			return
		}
		if v, ok := os.LookupEnv(EnvName(f.Name)); ok && envErr == nil {
			if err := fs.Set(f.Name, v); err != nil {
				envErr = fmt.Errorf("environment %s=%q: %w", EnvName(f.Name), v, err)
			}
		}
	})
	if envErr != nil {
		return envErr
	}
	return fs.Parse(args)
}

func decodeFile(path string, cfg any) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	// An empty file decodes to io.EOF: nothing to apply.
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	return nil
}

// findFlag finds -name/--name with a value in args before flag parsing.
func findFlag(args []string, name string) (string, bool) {
	for i, a := range args {
		if a == "--" {
			break
		}
		for _, p := range []string{"-" + name, "--" + name} {
			if a == p && i+1 < len(args) {
				return args[i+1], true
			}
			if v, ok := strings.CutPrefix(a, p+"="); ok {
				return v, true
			}
		}
	}
	return "", false
}

// StringMap is a flag.Value for repeated key=value flags such as --label site=a.
type StringMap map[string]string

func (m *StringMap) String() string {
	if m == nil || *m == nil {
		return ""
	}
	var parts []string
	for k, v := range *m {
		parts = append(parts, k+"="+v)
	}
	return strings.Join(parts, ",")
}

// Set accepts "k=v" or a comma-separated list "k=v,k2=v2".
func (m *StringMap) Set(s string) error {
	if *m == nil {
		*m = map[string]string{}
	}
	for _, kv := range strings.Split(s, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return fmt.Errorf("%q is not key=value", kv)
		}
		(*m)[k] = v
	}
	return nil
}
