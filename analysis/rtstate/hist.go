package rtstate

import (
	"encoding/binary"
	"fmt"
	"math"
)

// HistFormat is the in-memory layout of the runtime's timeHistogram, which
// changed in go1.20 (runtime/histogram.go of each release).
type HistFormat int

const (
	// HistGo120 is go1.20 and later: counts [40*4]uint64, then underflow
	// and overflow. Bucket 0 holds [0, 256) ns in 4 sub-buckets of 64 ns;
	// bucket b >= 1 holds [2^(b+7), 2^(b+8)) in 4 equal sub-buckets;
	// overflow is [2^47 ns, +Inf).
	HistGo120 HistFormat = iota
	// HistGo118 is go1.18 and go1.19: counts [45*16]uint64, then
	// underflow. Super-bucket 0 holds [0, 16) ns one nanosecond each;
	// super-bucket s >= 1 holds [2^(s+3), 2^(s+4)) in 16 sub-buckets; the
	// last sub-bucket also takes everything larger (up to +Inf).
	HistGo118
)

// Size returns the size of the runtime's timeHistogram in bytes.
func (f HistFormat) Size() int { return 8 * f.words() }

func (f HistFormat) words() int {
	if f == HistGo118 {
		return 45*16 + 1
	}
	return 40*4 + 2
}

// Histogram is a reading of a runtime timeHistogram in the shape
// runtime/metrics gives it (metrics.Float64Histogram): Counts[i] counts the
// durations in [Bounds[i], Bounds[i+1]) nanoseconds. Bounds[0] is -Inf (the
// underflow bucket) and the last bound may be +Inf.
type Histogram struct {
	Bounds []float64 // len(Counts)+1, nanoseconds
	Counts []uint64
}

// boundsCache holds the bucket boundaries of each format: they are constants.
var boundsCache = map[HistFormat][]float64{
	HistGo120: go120Bounds(),
	HistGo118: go118Bounds(),
}

// Bounds returns the bucket boundaries of a format in nanoseconds, as
// runtime/metrics gives them in seconds for /sched/latencies:seconds. The
// slice is shared: do not modify it.
func Bounds(f HistFormat) []float64 { return boundsCache[f] }

// go120Bounds mirrors timeHistogramMetricsBuckets of go1.20+, in ns.
func go120Bounds() []float64 {
	const minBits, maxBits, subBits = 9, 48, 2
	const nsub = 1 << subBits
	const total = (maxBits-minBits+1)*nsub + 2
	b := make([]float64, total+1)
	b[0] = math.Inf(-1)
	for j := 0; j < nsub; j++ {
		b[j+1] = float64(uint64(j) << (minBits - 1 - subBits))
	}
	for i := minBits; i < maxBits; i++ {
		for j := 0; j < nsub; j++ {
			ns := uint64(1)<<(i-1) | uint64(j)<<(i-1-subBits)
			b[(i-minBits+1)*nsub+j+1] = float64(ns)
		}
	}
	b[len(b)-2] = float64(uint64(1) << (maxBits - 1))
	b[len(b)-1] = math.Inf(1)
	return b
}

// go118Bounds mirrors timeHistogramMetricsBuckets of go1.18 and go1.19, in ns.
func go118Bounds() []float64 {
	const subBits, nsuper = 4, 45
	const nsub = 1 << subBits
	const total = nsuper*nsub + 1
	b := make([]float64, total+1)
	b[0] = math.Inf(-1)
	for i := 0; i < nsub; i++ {
		b[i+1] = float64(i)
	}
	for i := 0; i < nsuper-1; i++ {
		for j := 0; j < nsub; j++ {
			ns := uint64(1)<<(i+subBits) | uint64(j)<<i
			b[(i+1)*nsub+j+1] = float64(ns)
		}
	}
	b[len(b)-1] = math.Inf(1)
	return b
}

// DecodeHistogram decodes the raw bytes of a runtime timeHistogram (at least
// f.Size() bytes, little-endian) into the runtime/metrics shape: the
// underflow count first, then the buckets, then (go1.20+) the overflow.
func DecodeHistogram(f HistFormat, raw []byte) (Histogram, error) {
	n := f.words()
	if len(raw) < 8*n {
		return Histogram{}, fmt.Errorf("decode timeHistogram: %d bytes, want %d", len(raw), 8*n)
	}
	w := func(i int) uint64 { return binary.LittleEndian.Uint64(raw[8*i:]) }
	counts := make([]uint64, n)
	switch f {
	case HistGo118:
		nb := 45 * 16
		counts[0] = w(nb) // underflow
		for i := 0; i < nb; i++ {
			counts[i+1] = w(i)
		}
	default:
		nb := 40 * 4
		counts[0] = w(nb) // underflow
		for i := 0; i < nb; i++ {
			counts[i+1] = w(i)
		}
		counts[n-1] = w(nb + 1) // overflow
	}
	return Histogram{Bounds: boundsCache[f], Counts: counts}, nil
}

// Total returns the number of recorded durations.
func (h Histogram) Total() uint64 {
	var t uint64
	for _, c := range h.Counts {
		t += c
	}
	return t
}

// Sub returns h - old bucket by bucket: the durations recorded between two
// readings. A bucket that went down (a torn or reordered read; the counters
// only grow) counts as zero, and ok is false.
func (h Histogram) Sub(old Histogram) (d Histogram, ok bool) {
	ok = true
	d = Histogram{Bounds: h.Bounds, Counts: make([]uint64, len(h.Counts))}
	if len(old.Counts) != len(h.Counts) {
		copy(d.Counts, h.Counts)
		return d, len(old.Counts) == 0
	}
	for i, c := range h.Counts {
		if c >= old.Counts[i] {
			d.Counts[i] = c - old.Counts[i]
		} else {
			ok = false
		}
	}
	return d, ok
}

// Quantile returns the q-quantile (0 <= q <= 1) in nanoseconds, linearly
// interpolated inside the bucket that holds it, and 0 for an empty
// histogram. The underflow bucket counts as 0 ns; a quantile in an
// unbounded last bucket is that bucket's lower bound.
func (h Histogram) Quantile(q float64) float64 {
	total := h.Total()
	if total == 0 {
		return 0
	}
	rank := q * float64(total)
	var cum float64
	for i, c := range h.Counts {
		if c == 0 {
			continue
		}
		if cum+float64(c) >= rank {
			lo, hi := h.Bounds[i], h.Bounds[i+1]
			if math.IsInf(lo, -1) {
				return 0
			}
			if math.IsInf(hi, 1) {
				return lo
			}
			frac := (rank - cum) / float64(c)
			if frac < 0 {
				frac = 0
			}
			return lo + frac*(hi-lo)
		}
		cum += float64(c)
	}
	// rank > total only through rounding: the last non-empty bucket.
	for i := len(h.Counts) - 1; i >= 0; i-- {
		if h.Counts[i] != 0 {
			if math.IsInf(h.Bounds[i+1], 1) {
				return h.Bounds[i]
			}
			return h.Bounds[i+1]
		}
	}
	return 0
}

// BucketOf returns the index of the bucket holding ns, for tests and for
// telling whether two quantiles fall in the same bucket.
func (h Histogram) BucketOf(ns float64) int {
	for i := len(h.Bounds) - 2; i >= 0; i-- {
		if ns >= h.Bounds[i] {
			return i
		}
	}
	return 0
}
