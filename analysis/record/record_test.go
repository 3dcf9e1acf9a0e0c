package record

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/gmpwatch/gmpwatch/analysis/event"
	"github.com/gmpwatch/gmpwatch/analysis/gobin"
	"github.com/gmpwatch/gmpwatch/analysis/plan"
)

func sample(t *testing.T, n int, end bool) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, &Meta{Plan: &plan.Plan{GoVersion: "go1.26.8", WaitReasons: plan.WaitReasons{"", "GC assist marking"}}, PID: 42, Start: time.Unix(1, 0).UTC(), Tool: "test"})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		ev := event.Event{Kind: event.KindGoCreate, Ts: uint64(1000 + i), Goid: uint64(i + 2), Aux: 1, PC: 0x401000, MID: 0, PID: 0, StackID: event.NoStack}
		if err := w.WriteEvents([]event.Event{ev}); err != nil {
			t.Fatal(err)
		}
	}
	w.WriteSymbols([]Symbol{{PC: 0x401000, Frame: gobin.Frame{Func: "main.main", File: "/src/main.go", Line: 12}}, {PC: 0x401000}})
	w.WriteStacks(map[int32][]uint64{3: {0x401000, 0x402000}})
	w.WriteStats(&Stats{Events: uint64(n)})
	if end {
		if err := w.Close(&Stats{Events: uint64(n), Lost: 2}); err != nil {
			t.Fatal(err)
		}
	} else {
		w.Flush()
	}
	return buf.Bytes()
}

func TestRoundTrip(t *testing.T) {
	rec, err := Read(bytes.NewReader(sample(t, 100, true)))
	if err != nil {
		t.Fatal(err)
	}
	if !rec.Complete || rec.Truncated != "" {
		t.Errorf("complete=%v truncated=%q", rec.Complete, rec.Truncated)
	}
	if len(rec.Events) != 100 || rec.Events[99].Goid != 101 || rec.Events[0].Kind != event.KindGoCreate {
		t.Errorf("events: %d", len(rec.Events))
	}
	if f := rec.Symbols[0x401000]; f.Func != "main.main" || f.Line != 12 || len(rec.Symbols) != 1 {
		t.Errorf("symbols %v", rec.Symbols)
	}
	if got := rec.Stacks[3]; len(got) != 2 || got[1] != 0x402000 {
		t.Errorf("stacks %v", rec.Stacks)
	}
	if rec.Stats.Lost != 2 || rec.Meta.PID != 42 || rec.Meta.Plan.WaitReasons.Name(1) != "GC assist marking" {
		t.Errorf("stats %+v meta %+v", rec.Stats, rec.Meta)
	}
}

// TestTruncated cuts a recording at every byte: a cut inside the header or
// the Meta block is an error; anywhere later gives the complete blocks
// before the cut and says where reading stopped.
func TestTruncated(t *testing.T) {
	full := sample(t, 20, true)
	metaEnd := len(magic) + 4 + 12
	metaEnd += int(uint32(full[metaEnd-8]) | uint32(full[metaEnd-7])<<8 | uint32(full[metaEnd-6])<<16)
	prev := -1
	for cut := 0; cut < len(full); cut++ {
		rec, err := Read(bytes.NewReader(full[:cut]))
		if cut < metaEnd {
			if err == nil {
				t.Fatalf("cut at %d (inside header/meta): no error", cut)
			}
			continue
		}
		if err != nil {
			t.Fatalf("cut at %d: %v", cut, err)
		}
		if rec.Complete || rec.Truncated == "" || !strings.Contains(rec.Truncated, "stopped at byte") {
			t.Fatalf("cut at %d: complete=%v truncated=%q", cut, rec.Complete, rec.Truncated)
		}
		if len(rec.Events) < prev {
			t.Fatalf("cut at %d: %d events, fewer than a shorter cut's %d", cut, len(rec.Events), prev)
		}
		prev = len(rec.Events)
	}
	if prev != 20 {
		t.Errorf("last cut kept %d events, want 20", prev)
	}
}

func TestRefused(t *testing.T) {
	if _, err := Read(strings.NewReader("hello world, not a recording")); !errors.Is(err, ErrNotRecording) {
		t.Errorf("text: %v", err)
	}
	newer := sample(t, 1, true)
	newer[len(magic)] = Version + 1
	if _, err := Read(bytes.NewReader(newer)); !errors.Is(err, ErrVersion) {
		t.Errorf("newer version: %v", err)
	}
	bad := sample(t, 5, true)
	bad[len(magic)+4+12+3] ^= 0xff // inside Meta's payload
	if _, err := Read(bytes.NewReader(bad)); !errors.Is(err, ErrCorrupt) {
		t.Errorf("damaged meta: %v", err)
	}
	damaged := sample(t, 5, true)
	damaged[len(damaged)-3] ^= 0xff // inside End
	rec, err := Read(bytes.NewReader(damaged))
	if err != nil || rec.Complete || !strings.Contains(rec.Truncated, "checksum") || len(rec.Events) != 5 {
		t.Errorf("damaged end: %v %+v", err, rec)
	}
}

func FuzzRead(f *testing.F) {
	f.Add([]byte(nil))
	var buf bytes.Buffer
	w, _ := NewWriter(&buf, &Meta{PID: 1})
	w.WriteEvents([]event.Event{{Kind: event.KindGoStart, StackID: event.NoStack}})
	w.Close(&Stats{})
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = Read(bytes.NewReader(b))
	})
}
