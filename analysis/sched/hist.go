package sched

import (
	"math"
	"math/bits"
)

// subBits is the number of bits of each value below its leading one that
// select a sub-bucket: 8 sub-buckets per power of two, so a bucket is at most
// 12.5% wide relative to its lower bound.
const subBits = 3

const (
	subCount   = 1 << subBits
	numBuckets = subCount + (64-subBits)*subCount
)

// Histogram is a log-linear histogram of durations in nanoseconds: values
// below 8 have a bucket each, every power of two above is split into 8
// equal sub-buckets (the layout of the runtime's timeHistogram, finer). It
// records count, sum, min and max exactly.
//
// The zero value is an empty histogram ready to use.
type Histogram struct {
	counts [numBuckets]uint64
	n      uint64
	sum    uint64
	min    uint64
	max    uint64
}

// bucketOf returns the index of the bucket holding v.
func bucketOf(v uint64) int {
	if v < subCount {
		return int(v)
	}
	e := bits.Len64(v) - 1 // position of the leading one, >= subBits
	sub := int(v>>(e-subBits)) & (subCount - 1)
	return subCount + (e-subBits)*subCount + sub
}

// BucketBounds returns the smallest and the largest value (both inclusive)
// that bucket i holds.
func BucketBounds(i int) (lo, hi uint64) {
	if i < subCount {
		return uint64(i), uint64(i)
	}
	e := (i-subCount)/subCount + subBits
	sub := uint64((i - subCount) % subCount)
	width := uint64(1) << (e - subBits)
	lo = (subCount + sub) * width
	hi = lo + width - 1
	return lo, hi
}

// Record adds one value.
func (h *Histogram) Record(v uint64) {
	h.counts[bucketOf(v)]++
	if h.n == 0 || v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.n++
	if h.sum+v < h.sum {
		h.sum = math.MaxUint64 // saturate rather than wrap
	} else {
		h.sum += v
	}
}

// Count returns the number of values recorded.
func (h *Histogram) Count() uint64 { return h.n }

// Sum returns the sum of the values (saturated at the uint64 maximum).
func (h *Histogram) Sum() uint64 { return h.sum }

// Min returns the smallest value, 0 when empty.
func (h *Histogram) Min() uint64 { return h.min }

// Max returns the largest value, 0 when empty.
func (h *Histogram) Max() uint64 { return h.max }

// Quantile returns an upper bound of the q-quantile (0 < q <= 1): the upper
// bound of the bucket holding the value of rank ceil(q*n), clamped to
// [Min, Max]. It is within one bucket (12.5%) of the exact quantile, never
// below it, and Quantile(a) <= Quantile(b) for a <= b. It returns 0 when the
// histogram is empty.
func (h *Histogram) Quantile(q float64) uint64 {
	if h.n == 0 {
		return 0
	}
	if q <= 0 {
		return h.min
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	if rank < 1 {
		rank = 1
	}
	if rank > h.n {
		rank = h.n
	}
	var cum uint64
	for i := range h.counts {
		cum += h.counts[i]
		if cum >= rank {
			_, hi := BucketBounds(i)
			if hi > h.max {
				hi = h.max
			}
			if hi < h.min {
				hi = h.min
			}
			return hi
		}
	}
	return h.max
}

// Merge adds the values of o to h.
func (h *Histogram) Merge(o *Histogram) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	if o.max > h.max {
		h.max = o.max
	}
	h.n += o.n
	if h.sum+o.sum < h.sum {
		h.sum = math.MaxUint64
	} else {
		h.sum += o.sum
	}
}

// Reset empties the histogram.
func (h *Histogram) Reset() { *h = Histogram{} }

// Bucket is one non-empty bucket of a histogram: Count values v with
// LoNs <= v <= HiNs.
type Bucket struct {
	LoNs  uint64 `json:"lo_ns"`
	HiNs  uint64 `json:"hi_ns"`
	Count uint64 `json:"count"`
}

// Buckets returns the non-empty buckets in increasing order.
func (h *Histogram) Buckets() []Bucket {
	out := []Bucket{}
	if h.n == 0 {
		return out
	}
	for i, c := range h.counts {
		if c == 0 {
			continue
		}
		lo, hi := BucketBounds(i)
		out = append(out, Bucket{LoNs: lo, HiNs: hi, Count: c})
	}
	return out
}

// Pow2Buckets returns the histogram coarsened to powers of two, the
// log-scale view a person reads: bucket k holds [2^k, 2^(k+1)-1] (bucket 0
// also holds 0). Only the range from the first to the last non-empty bucket
// is returned.
func (h *Histogram) Pow2Buckets() []Bucket {
	var agg [65]uint64
	first, last := -1, -1
	for i, c := range h.counts {
		if c == 0 {
			continue
		}
		lo, _ := BucketBounds(i)
		k := 0
		if lo > 0 {
			k = bits.Len64(lo) - 1
		}
		agg[k] += c
		if first < 0 || k < first {
			first = k
		}
		if k > last {
			last = k
		}
	}
	out := []Bucket{}
	if first < 0 {
		return out
	}
	for k := first; k <= last; k++ {
		lo := uint64(1) << k
		if k == 0 {
			lo = 0
		}
		hi := uint64(math.MaxUint64)
		if k < 63 {
			hi = uint64(1)<<(k+1) - 1
		}
		out = append(out, Bucket{LoNs: lo, HiNs: hi, Count: agg[k]})
	}
	return out
}
