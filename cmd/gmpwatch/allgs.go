package main

import (
	"context"
	"sync"
	"time"

	"github.com/gmpwatch/gmpwatch/analysis/rtstate"
)

// allgsScanner scans a process's goroutines (runtime.allgs in its memory),
// the costly read of the zero-overhead sampler: a million goroutines take
// a second. A scan is reused until ten times its own duration has passed
// (so scanning costs at most a tenth of gmpwatch's time) and at least half
// an interval, so that the readers of one interval (the live view, the
// exact figures) share one scan.
type allgsScanner struct {
	rt       *rtstate.Reader
	interval time.Duration

	mu   sync.Mutex
	last *rtstate.GScan
	at   time.Time
	took time.Duration
}

// scan returns the current scan and when it was taken, scanning when due;
// a failed scan returns nil.
func (s *allgsScanner) scan(ctx context.Context) (*rtstate.GScan, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.last == nil || time.Since(s.at) >= max(10*s.took, s.interval/2) {
		start := time.Now()
		sc, err := s.rt.Goroutines(ctx, rtstate.ScanOptions{})
		s.took = time.Since(start)
		if err != nil {
			s.last = nil
			return nil, time.Time{}
		}
		s.last, s.at = sc, time.Now()
	}
	return s.last, s.at
}

// latest returns the last scan without scanning; nil if none.
func (s *allgsScanner) latest() *rtstate.GScan {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}
