package sim

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// Irradiance is an hourly global horizontal irradiance trace (W/m²).
type Irradiance struct {
	// Start is the time of the first value; values are Step apart.
	Start time.Time
	Step  time.Duration
	GHI   []float64
}

// ReadPVGIS parses a PVGIS TMY CSV: metadata lines, a month→year table, the
// header "time(UTC),T2m,RH,G(h),…", hourly rows, then a legend. A typical
// meteorological year stitches each month from a different real year
// (October here is 2006), so the rows are taken in file order as the hours
// of one year from year-01-01 00:00 UTC, not by their own timestamps, and
// the file's "Irradiance Time Offset (h)" shifts every value to the moment
// it describes.
func ReadPVGIS(r io.Reader, year int) (*Irradiance, error) {
	sc := bufio.NewScanner(r)
	col := -1
	var offset time.Duration
	var ghi []float64
	line := 0
	for sc.Scan() {
		line++
		s := strings.TrimSpace(sc.Text())
		if col < 0 {
			if v, ok := strings.CutPrefix(s, "Irradiance Time Offset (h):"); ok {
				h, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
				if err != nil {
					return nil, fmt.Errorf("pvgis line %d: time offset %q: %w", line, v, err)
				}
				offset = time.Duration(h * float64(time.Hour))
			}
			if strings.HasPrefix(s, "time(UTC),") {
				for i, name := range strings.Split(s, ",") {
					if name == "G(h)" {
						col = i
					}
				}
				if col < 0 {
					return nil, fmt.Errorf("pvgis line %d: header has no G(h) column", line)
				}
			}
			continue
		}
		f := strings.Split(s, ",")
		if len(f) <= col || len(f[0]) != len("20060101:0000") || f[0][8] != ':' {
			if len(ghi) > 0 {
				break // the legend after the rows
			}
			continue
		}
		v, err := strconv.ParseFloat(f[col], 64)
		if err != nil {
			return nil, fmt.Errorf("pvgis line %d: G(h) %q: %w", line, f[col], err)
		}
		ghi = append(ghi, max(v, 0))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("pvgis: %w", err)
	}
	if col < 0 {
		return nil, fmt.Errorf("pvgis: no time(UTC) header")
	}
	if len(ghi) < 24 {
		return nil, fmt.Errorf("pvgis: %d hourly rows, want a year", len(ghi))
	}
	return &Irradiance{
		Start: time.Date(year, 1, 1, 0, 0, 0, 0, time.UTC).Add(offset),
		Step:  time.Hour,
		GHI:   ghi,
	}, nil
}

// At is the irradiance at t, linearly interpolated between the hourly
// values (0 outside the trace).
func (ir *Irradiance) At(t time.Time) float64 {
	x := float64(t.Sub(ir.Start)) / float64(ir.Step)
	if x < 0 || x > float64(len(ir.GHI)-1) {
		return 0
	}
	i := int(x)
	if i == len(ir.GHI)-1 {
		return ir.GHI[i]
	}
	u := x - float64(i)
	return ir.GHI[i]*(1-u) + ir.GHI[i+1]*u
}

// DayKWh is the irradiation of the UTC day starting at day, kWh/m².
func (ir *Irradiance) DayKWh(day time.Time) float64 {
	s := 0.0
	for m := range 24 * 60 {
		s += ir.At(day.Add(time.Duration(m) * time.Minute))
	}
	return s / 60 / 1000
}
