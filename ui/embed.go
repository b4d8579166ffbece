// Package ui holds the operator web UI's templates and static assets,
// embedded into the console binary; console/internal/ui serves them.
package ui

import "embed"

// FS holds templates/*.html and static/** (app CSS/JS and vendored htmx,
// uPlot).
//
//go:embed templates static
var FS embed.FS
