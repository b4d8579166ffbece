package ui

import (
	"fmt"
	"html/template"
	"math"
	"sort"
	"strings"
	"time"
)

func templateFuncs() template.FuncMap {
	return template.FuncMap{
		"pct": func(p *float64) string {
			if p == nil {
				return "—"
			}
			return fmt.Sprintf("%.0f%%", *p)
		},
		"num": func(v any) string {
			switch x := v.(type) {
			case float64:
				if math.IsNaN(x) {
					return "—"
				}
				if math.Abs(x) >= 100 || x == math.Trunc(x) {
					return fmt.Sprintf("%.0f", x)
				}
				return fmt.Sprintf("%.2f", x)
			case *float64:
				if x == nil {
					return "—"
				}
				return fmt.Sprintf("%.2f", *x)
			}
			return fmt.Sprint(v)
		},
		"f1": func(p *float64) string {
			if p == nil {
				return "—"
			}
			return fmt.Sprintf("%.1f", *p)
		},
		"bytes": humanBytes,
		"ago":   ago,
		"agop": func(t *time.Time) string {
			if t == nil {
				return "—"
			}
			return ago(*t)
		},
		"ts": func(t time.Time) string {
			if t.IsZero() {
				return "—"
			}
			return t.UTC().Format("2006-01-02 15:04:05Z")
		},
		"tsp": func(t *time.Time) string {
			if t == nil || t.IsZero() {
				return "—"
			}
			return t.UTC().Format("2006-01-02 15:04:05Z")
		},
		"short": func(s string) string {
			if len(s) > 12 {
				return s[:12] + "…"
			}
			return s
		},
		"join": strings.Join,
		"labels": func(m map[string]string) string {
			keys := make([]string, 0, len(m))
			for k := range m {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			parts := make([]string, 0, len(keys))
			for _, k := range keys {
				parts = append(parts, k+"="+m[k])
			}
			return strings.Join(parts, " ")
		},
		"scores": func(m map[string]float64) string {
			keys := make([]string, 0, len(m))
			for k := range m {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			parts := make([]string, 0, len(keys))
			for _, k := range keys {
				parts = append(parts, fmt.Sprintf("%s %.1f", k, m[k]))
			}
			return strings.Join(parts, ", ")
		},
		"money":   func(c int64) string { return fmt.Sprintf("%d.%02d", c/100, c%100) },
		"eq2":     func(a, b, c string) bool { return a == b || a == c },
		"has":     hasRole,
		"nodepct": nodePercent,
		"deref": func(p *float64) float64 {
			if p == nil {
				return 0
			}
			return *p
		},
	}
}

func humanBytes(v any) string {
	var f float64
	switch x := v.(type) {
	case int64:
		f = float64(x)
	case uint64:
		f = float64(x)
	case int:
		f = float64(x)
	case float64:
		f = x
	}
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for math.Abs(f) >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0f B", f)
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}
