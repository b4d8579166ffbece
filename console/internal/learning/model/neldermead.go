package model

import "sort"

// nelderMead minimises f from x0 with the simplex method (standard
// coefficients: reflection 1, expansion 2, contraction ½, shrink ½), using
// at most evals evaluations of f. It returns the best point and its value.
func nelderMead(f func([]float64) float64, x0 []float64, size float64, evals int) ([]float64, float64) {
	d := len(x0)
	type vertex struct {
		x []float64
		f float64
	}
	used := 0
	eval := func(x []float64) vertex { used++; return vertex{x, f(x)} }
	simplex := make([]vertex, d+1)
	simplex[0] = eval(append([]float64(nil), x0...))
	for i := range d {
		x := append([]float64(nil), x0...)
		x[i] += size
		simplex[i+1] = eval(x)
	}
	// along returns centroid + t·(centroid - worst).
	along := func(c []float64, w []float64, t float64) []float64 {
		x := make([]float64, d)
		for i := range x {
			x[i] = c[i] + t*(c[i]-w[i])
		}
		return x
	}
	c := make([]float64, d)
	for used < evals {
		sort.SliceStable(simplex, func(i, j int) bool { return simplex[i].f < simplex[j].f })
		if simplex[d].f-simplex[0].f <= 1e-12*(1+abs(simplex[0].f)) {
			break
		}
		for i := range c {
			c[i] = 0
			for _, v := range simplex[:d] {
				c[i] += v.x[i] / float64(d)
			}
		}
		worst := simplex[d]
		r := eval(along(c, worst.x, 1))
		switch {
		case r.f < simplex[0].f:
			if e := eval(along(c, worst.x, 2)); e.f < r.f {
				simplex[d] = e
			} else {
				simplex[d] = r
			}
		case r.f < simplex[d-1].f:
			simplex[d] = r
		default:
			t := 0.5 // outside contraction
			if r.f >= worst.f {
				t = -0.5 // inside
			}
			if k := eval(along(c, worst.x, t)); k.f < min(r.f, worst.f) {
				simplex[d] = k
				continue
			}
			for i := 1; i <= d; i++ {
				x := make([]float64, d)
				for j := range x {
					x[j] = simplex[0].x[j] + 0.5*(simplex[i].x[j]-simplex[0].x[j])
				}
				simplex[i] = eval(x)
			}
		}
	}
	sort.SliceStable(simplex, func(i, j int) bool { return simplex[i].f < simplex[j].f })
	return simplex[0].x, simplex[0].f
}

func abs(v float64) float64 {
	if v < 0 {
		return -v
	}
	return v
}
