// Package record reads and writes gmpwatch recordings: the raw events of a
// tracing session, with the probe plan and the symbols they need, so a
// recording renders on another machine without the binary.
//
// # Format (version 1)
//
// A recording is a header and a sequence of self-contained blocks, written
// as the session goes. Every block carries its length and a CRC-32C of its
// payload, so a recording cut short (gmpwatch or the machine died) is read
// up to its last complete block, and the reader says where it stopped.
//
//	header  = "GMPWREC\n" u16:version u16:0
//	block   = u8:kind [3]u8:0 u32:len u32:crc32c(payload) payload[len]
//
// All integers are little endian. Block kinds and payloads:
//
//	Meta     1  JSON Meta: the plan (analysis/plan), the command, when and how.
//	            The first block; exactly one.
//	Events   2  u32:n, then n events of event.Size bytes (analysis/event wire form)
//	Symbols  3  u32:n, then n × (u64:pc, str:function, str:file, u32:line):
//	            source positions of the program counters the events carry
//	            (link-time addresses; return addresses are stored as found,
//	            already adjusted to their call's line by the writer's caller)
//	Stacks   4  u32:n, then n × (i32:id, u16:depth, depth × u64:pc)
//	Stats    5  JSON Stats: counters at the time of writing; the last one wins
//	End      6  JSON Stats: the final counters; present when the session ended cleanly
//
// where str is u16:len and len bytes of UTF-8. Readers skip kinds they do not
// know; a header with a newer version is refused.
package record

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"time"

	"github.com/gmpwatch/gmpwatch/analysis/event"
	"github.com/gmpwatch/gmpwatch/analysis/gobin"
	"github.com/gmpwatch/gmpwatch/analysis/plan"
)

// Version is the format version this package writes and the newest it reads.
const Version = 1

const magic = "GMPWREC\n"

// Block kinds.
const (
	KindMeta    = 1
	KindEvents  = 2
	KindSymbols = 3
	KindStacks  = 4
	KindStats   = 5
	KindEnd     = 6
)

// Sentinel errors.
var (
	ErrNotRecording = errors.New("not a gmpwatch recording")
	ErrVersion      = errors.New("recording from a newer gmpwatch")
	ErrCorrupt      = errors.New("corrupt recording")
)

// maxBlock bounds a block's payload, so a corrupt length cannot make the
// reader allocate without limit.
const maxBlock = 64 << 20

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Meta describes the session.
type Meta struct {
	Plan     *plan.Plan `json:"plan"`
	Command  []string   `json:"command,omitempty"` // for gmpwatch -- CMD
	PID      int        `json:"pid"`
	Start    time.Time  `json:"start"`
	Programs []string   `json:"programs"` // BPF programs attached
	Host     string     `json:"host,omitempty"`
	// MonoStart is CLOCK_MONOTONIC at Start, relating event times to wall time.
	MonoStart uint64 `json:"mono_start_ns"`
	Tool      string `json:"tool"` // gmpwatch version that wrote it
}

// Stats are the session's counters.
type Stats struct {
	Events   uint64            `json:"events"`
	Lost     uint64            `json:"lost_events"`
	Hits     map[string]uint64 `json:"probe_hits,omitempty"`
	Duration time.Duration     `json:"duration_ns"`
	// ExitCode is the traced command's exit status, when gmpwatch started it.
	ExitCode *int `json:"exit_code,omitempty"`
	// GCCycles is how many GC cycles the runtime completed while recording
	// (memstats.numgc read from memory at the start and at the last flush);
	// absent when the target's layout lacks it.
	GCCycles *uint32 `json:"gc_cycles,omitempty"`
}

// Writer writes a recording. It is not safe for concurrent use.
type Writer struct {
	w       *bufio.Writer
	buf     []byte
	symSeen map[uint64]bool
	err     error
}

// NewWriter writes the header and the Meta block.
func NewWriter(w io.Writer, meta *Meta) (*Writer, error) {
	rw := &Writer{w: bufio.NewWriterSize(w, 1<<20), symSeen: map[uint64]bool{}}
	hdr := append([]byte(magic), 0, 0, 0, 0)
	binary.LittleEndian.PutUint16(hdr[len(magic):], Version)
	if _, err := rw.w.Write(hdr); err != nil {
		return nil, err
	}
	b, err := json.Marshal(meta)
	if err != nil {
		return nil, err
	}
	if err := rw.block(KindMeta, b); err != nil {
		return nil, err
	}
	return rw, rw.Flush()
}

func (w *Writer) block(kind byte, payload []byte) error {
	if w.err != nil {
		return w.err
	}
	if len(payload) > maxBlock {
		return fmt.Errorf("record: block of %d bytes exceeds %d", len(payload), maxBlock)
	}
	var h [12]byte
	h[0] = kind
	binary.LittleEndian.PutUint32(h[4:], uint32(len(payload)))
	binary.LittleEndian.PutUint32(h[8:], crc32.Checksum(payload, castagnoli))
	if _, err := w.w.Write(h[:]); err != nil {
		w.err = err
		return err
	}
	if _, err := w.w.Write(payload); err != nil {
		w.err = err
		return err
	}
	return nil
}

// maxEventsPerBlock keeps blocks well under maxBlock.
const maxEventsPerBlock = (maxBlock - 4) / event.Size / 2

// WriteEvents writes events as one or more Events blocks.
func (w *Writer) WriteEvents(evs []event.Event) error {
	for len(evs) > 0 {
		n := min(len(evs), maxEventsPerBlock)
		b := binary.LittleEndian.AppendUint32(w.buf[:0], uint32(n))
		for i := range evs[:n] {
			b = event.Encode(b, &evs[i])
		}
		w.buf = b
		if err := w.block(KindEvents, b); err != nil {
			return err
		}
		evs = evs[n:]
	}
	return nil
}

// Symbol is a program counter and its source position.
type Symbol struct {
	PC    uint64
	Frame gobin.Frame
}

// WriteSymbols writes the symbols not written before.
func (w *Writer) WriteSymbols(syms []Symbol) error {
	b := binary.LittleEndian.AppendUint32(w.buf[:0], 0)
	n := 0
	for _, s := range syms {
		if w.symSeen[s.PC] {
			continue
		}
		w.symSeen[s.PC] = true
		n++
		b = binary.LittleEndian.AppendUint64(b, s.PC)
		b = appendStr(b, s.Frame.Func)
		b = appendStr(b, s.Frame.File)
		b = binary.LittleEndian.AppendUint32(b, uint32(s.Frame.Line))
	}
	if n == 0 {
		return nil
	}
	binary.LittleEndian.PutUint32(b, uint32(n))
	w.buf = b
	return w.block(KindSymbols, b)
}

// HasSymbol reports whether pc's symbol was written.
func (w *Writer) HasSymbol(pc uint64) bool { return w.symSeen[pc] }

// WriteStacks writes captured stacks.
func (w *Writer) WriteStacks(stacks map[int32][]uint64) error {
	if len(stacks) == 0 {
		return nil
	}
	b := binary.LittleEndian.AppendUint32(w.buf[:0], uint32(len(stacks)))
	for id, pcs := range stacks {
		if len(pcs) > 0xffff {
			pcs = pcs[:0xffff]
		}
		b = binary.LittleEndian.AppendUint32(b, uint32(id))
		b = binary.LittleEndian.AppendUint16(b, uint16(len(pcs)))
		for _, pc := range pcs {
			b = binary.LittleEndian.AppendUint64(b, pc)
		}
	}
	w.buf = b
	return w.block(KindStacks, b)
}

// WriteStats writes the counters so far.
func (w *Writer) WriteStats(s *Stats) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return w.block(KindStats, b)
}

// Flush writes buffered blocks to the underlying writer. Call it at
// intervals: what is flushed survives a crash.
func (w *Writer) Flush() error {
	if w.err != nil {
		return w.err
	}
	return w.w.Flush()
}

// Close writes the End block and flushes. It does not close the underlying
// writer.
func (w *Writer) Close(final *Stats) error {
	b, err := json.Marshal(final)
	if err != nil {
		return err
	}
	if err := w.block(KindEnd, b); err != nil {
		return err
	}
	return w.Flush()
}

func appendStr(b []byte, s string) []byte {
	if len(s) > 0xffff {
		s = s[:0xffff]
	}
	b = binary.LittleEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// Recording is a recording read whole.
type Recording struct {
	Meta    Meta
	Events  []event.Event
	Symbols map[uint64]gobin.Frame
	Stacks  map[int32][]uint64
	Stats   Stats // from End, or from the last Stats block
	// Complete is true when the End block was read.
	Complete bool
	// Truncated describes where reading stopped early, if it did: the byte
	// offset of the first incomplete or damaged block and why.
	Truncated string
}

// Symbolize resolves pc, a runtime address of the recorded process, from the
// recording's symbols; it has the type gobin.Symbolize. Symbols are keyed by
// link-time address and hold, for return addresses, the call's position, as
// the writer's caller resolved them.
func (rec *Recording) Symbolize(pc uint64, ret bool) (gobin.Frame, bool) {
	var bias uint64
	if rec.Meta.Plan != nil {
		bias = rec.Meta.Plan.LoadBias
	}
	f, ok := rec.Symbols[pc-bias]
	return f, ok
}

// Read reads a recording. A recording cut short or damaged after its Meta
// block is returned with everything up to the last complete block and
// Truncated set; a file that is not a recording, or from a newer format
// version, or damaged before its Meta block, is an error.
func Read(r io.Reader) (*Recording, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	hdr := make([]byte, len(magic)+4)
	if _, err := io.ReadFull(br, hdr); err != nil || string(hdr[:len(magic)]) != magic {
		return nil, ErrNotRecording
	}
	if v := binary.LittleEndian.Uint16(hdr[len(magic):]); v > Version {
		return nil, fmt.Errorf("%w: format version %d, this gmpwatch reads up to %d", ErrVersion, v, Version)
	} else if v == 0 {
		return nil, fmt.Errorf("%w: format version 0", ErrCorrupt)
	}
	rec := &Recording{Symbols: map[uint64]gobin.Frame{}, Stacks: map[int32][]uint64{}}
	off := int64(len(hdr))
	sawMeta := false
	for {
		kind, payload, err := readBlock(br)
		if err == io.EOF {
			break
		}
		if err == nil {
			err = rec.apply(kind, payload, sawMeta)
		}
		if err != nil {
			if !sawMeta {
				return nil, fmt.Errorf("%w: at byte %d: %v", ErrCorrupt, off, err)
			}
			rec.Truncated = fmt.Sprintf("stopped at byte %d: %v", off, err)
			break
		}
		sawMeta = sawMeta || kind == KindMeta
		off += 12 + int64(len(payload))
	}
	if !sawMeta {
		return nil, fmt.Errorf("%w: no Meta block", ErrCorrupt)
	}
	if !rec.Complete && rec.Truncated == "" {
		rec.Truncated = fmt.Sprintf("stopped at byte %d: the recording has no End block (the session did not finish)", off)
	}
	return rec, nil
}

func readBlock(br *bufio.Reader) (byte, []byte, error) {
	var h [12]byte
	n, err := io.ReadFull(br, h[:])
	if err == io.EOF && n == 0 {
		return 0, nil, io.EOF
	}
	if err != nil {
		return 0, nil, errors.New("incomplete block header")
	}
	size := binary.LittleEndian.Uint32(h[4:])
	if size > maxBlock {
		return 0, nil, fmt.Errorf("block length %d is implausible", size)
	}
	payload := make([]byte, size)
	if _, err := io.ReadFull(br, payload); err != nil {
		return 0, nil, fmt.Errorf("incomplete block: %d of %d bytes", len(payload), size)
	}
	if crc32.Checksum(payload, castagnoli) != binary.LittleEndian.Uint32(h[8:]) {
		return 0, nil, errors.New("block checksum mismatch")
	}
	return h[0], payload, nil
}

func (rec *Recording) apply(kind byte, p []byte, sawMeta bool) error {
	if !sawMeta && kind != KindMeta {
		return errors.New("first block is not Meta")
	}
	le := binary.LittleEndian
	switch kind {
	case KindMeta:
		if sawMeta {
			return errors.New("second Meta block")
		}
		return json.Unmarshal(p, &rec.Meta)
	case KindEvents:
		if len(p) < 4 || uint64(le.Uint32(p))*event.Size != uint64(len(p)-4) {
			return errors.New("malformed Events block")
		}
		n := int(le.Uint32(p))
		for i := 0; i < n; i++ {
			var ev event.Event
			if err := event.Decode(p[4+i*event.Size:], &ev); err != nil {
				return fmt.Errorf("event %d: %w", i, err)
			}
			rec.Events = append(rec.Events, ev)
		}
	case KindSymbols:
		d := decoder{b: p}
		n := d.u32()
		for i := uint32(0); i < n && d.err == nil; i++ {
			pc := d.u64()
			f := gobin.Frame{Func: d.str(), File: d.str()}
			f.Line = int(d.u32())
			if d.err == nil {
				rec.Symbols[pc] = f
			}
		}
		return d.done("Symbols")
	case KindStacks:
		d := decoder{b: p}
		n := d.u32()
		for i := uint32(0); i < n && d.err == nil; i++ {
			id := int32(d.u32())
			depth := int(d.u16())
			pcs := make([]uint64, 0, depth)
			for j := 0; j < depth && d.err == nil; j++ {
				pcs = append(pcs, d.u64())
			}
			if d.err == nil {
				rec.Stacks[id] = pcs
			}
		}
		return d.done("Stacks")
	case KindStats:
		return json.Unmarshal(p, &rec.Stats)
	case KindEnd:
		rec.Complete = true
		return json.Unmarshal(p, &rec.Stats)
	}
	return nil // unknown kinds are skipped
}

// decoder reads a payload, remembering the first overrun.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) take(n int) []byte {
	if d.err != nil || len(d.b) < n {
		d.err = errors.New("payload too short")
		return make([]byte, n)
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) u16() uint16 { return binary.LittleEndian.Uint16(d.take(2)) }
func (d *decoder) u32() uint32 { return binary.LittleEndian.Uint32(d.take(4)) }
func (d *decoder) u64() uint64 { return binary.LittleEndian.Uint64(d.take(8)) }
func (d *decoder) str() string { return string(d.take(int(d.u16()))) }

func (d *decoder) done(what string) error {
	if d.err != nil {
		return fmt.Errorf("malformed %s block: %w", what, d.err)
	}
	if len(d.b) != 0 {
		return fmt.Errorf("malformed %s block: %d trailing bytes", what, len(d.b))
	}
	return nil
}
