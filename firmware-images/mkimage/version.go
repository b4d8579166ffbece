package main

import (
	"regexp"
	"strings"

	"github.com/cloudskin/cloudskin/shared/ota"
)

var notSuffix = regexp.MustCompile(`[^0-9A-Za-z.-]+`)

// imageVersion turns what make passes (a tag, git describe output, or
// "dev") into a version ota.ParseVersion accepts, so that an agent built from
// any tree can compare itself with a bundle: v0.8.0 → 0.8.0,
// v0.8.0-3-gabc1234 → 0.8.0-3-gabc1234, abc1234-dirty → 0.0.0-dev.abc1234-dirty.
func imageVersion(raw string) string {
	v := strings.TrimPrefix(strings.TrimSpace(raw), "v")
	if _, err := ota.ParseVersion(v); err == nil {
		return v
	}
	s := strings.Trim(notSuffix.ReplaceAllString(v, "."), ".-")
	if s == "" || s == "dev" {
		return "0.0.0-dev"
	}
	if len(s) > 60 {
		s = s[:60]
	}
	return "0.0.0-dev." + s
}

// debVersion is the package version of an image version: the suffix after
// major.minor.patch names a build, so it sorts before the plain release
// (0.8.0~rc.1 < 0.8.0), with its hyphens as dots (a hyphen would start a
// Debian revision).
func debVersion(v string) string {
	base, suffix, ok := strings.Cut(v, "-")
	if !ok {
		return base
	}
	return base + "~" + strings.ReplaceAll(suffix, "-", ".")
}
