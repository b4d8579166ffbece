package planner

import "math"

// earthRadius is the mean Earth radius in metres (IUGG).
const earthRadius = 6371008.8

// Distance is the great-circle (haversine) distance between a and b in metres.
func Distance(a, b Point) float64 {
	φ1, φ2 := a.Lat*math.Pi/180, b.Lat*math.Pi/180
	dφ := φ2 - φ1
	dλ := (b.Lon - a.Lon) * math.Pi / 180
	s1, s2 := math.Sin(dφ/2), math.Sin(dλ/2)
	h := s1*s1 + math.Cos(φ1)*math.Cos(φ2)*s2*s2
	return 2 * earthRadius * math.Asin(math.Sqrt(min(1, h)))
}

// vec3 is a point on the unit sphere. The hot loop compares squared chord
// lengths between vec3s, which orders points exactly like the great-circle
// distance but costs no trigonometry; only a node outside its coverage pays
// for one asin.
type vec3 struct{ x, y, z float64 }

func (p Point) valid() bool {
	return p.Lat >= -90 && p.Lat <= 90 && p.Lon >= -180 && p.Lon <= 180
}

func unitVec(p Point) vec3 {
	sφ, cφ := math.Sincos(p.Lat * math.Pi / 180)
	sλ, cλ := math.Sincos(p.Lon * math.Pi / 180)
	return vec3{cφ * cλ, cφ * sλ, sφ}
}

func chord2(a, b vec3) float64 {
	dx, dy, dz := a.x-b.x, a.y-b.y, a.z-b.z
	return dx*dx + dy*dy + dz*dz
}

// chordMetres turns a squared chord into the great-circle distance.
func chordMetres(c2 float64) float64 {
	x := math.Sqrt(c2) / 2
	if x < 0.01 {
		// Within ~127 km (every edge site) the asin series to x⁷ is exact
		// to double precision (the next term is below 1e-17 of x), and a
		// fifth of the cost of math.Asin.
		x2 := x * x
		return 2 * earthRadius * x * (1 + x2*(1.0/6+x2*(3.0/40+x2*(5.0/112))))
	}
	return 2 * earthRadius * math.Asin(min(1, x))
}

// metresChord2 is the squared chord of a great-circle distance.
func metresChord2(m float64) float64 {
	θ := m / earthRadius
	if θ >= math.Pi {
		return 4
	}
	h := θ / 2
	var c float64
	if h < 0.01 {
		// Coverage radii are metres to kilometres: the sine series to h⁷
		// is exact to double precision there.
		h2 := h * h
		c = 2 * h * (1 - h2/6*(1-h2/20*(1-h2/42)))
	} else {
		c = 2 * math.Sin(h)
	}
	return c * c
}
