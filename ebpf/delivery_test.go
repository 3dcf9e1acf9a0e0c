package ebpf

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	ciliumebpf "github.com/cilium/ebpf"

	"github.com/gmpwatch/gmpwatch/analysis/event"
	"github.com/gmpwatch/gmpwatch/analysis/plan"
	"github.com/gmpwatch/gmpwatch/internal/testtarget"
)

// deliveryMagic is the PC of deliver_events' events (DELIVERY_MAGIC).
const deliveryMagic = 0x79726576696c6564

// deliveryBatch is how many events one run of deliver_events emits.
const deliveryBatch = 4096

// deliveryCtx is deliver_events' context (struct delivery_ctx).
type deliveryCtx struct {
	Count uint32
	Kind  uint32
}

// deliveryRig is the event delivery pipeline under load: a tracer attached
// to an idle target, its Run consuming, and deliver_events writing into its
// ring buffer and loss counter from one producer.
type deliveryRig struct {
	tr   *Tracer
	objs deliveryObjects
	kind event.Kind

	// The producer's: events emitted (sequence numbers 0 to emitted-1) and
	// queued, and its thread.
	emitted, queued uint64
	tid             atomic.Uint32

	// The consumer's (Run's goroutine). next and gaps are read by others
	// only after delivered says the events they wait for were seen.
	delivered atomic.Uint64
	next      uint64 // lowest sequence number not seen yet
	gaps      uint64 // sequence numbers skipped: lost events
	lastTs    uint64
	foreign   atomic.Uint64 // the target's own events
	bad       atomic.Uint64 // events failing the checks
	badMsg    atomic.Pointer[string]
	// When set, the callback waits for the channel to close, held set.
	hold atomic.Pointer[chan struct{}]
	held atomic.Bool
}

// newDeliveryRig attaches a tracer to an idle gosched target, loads
// deliver_events on the tracer's maps and starts the tracer's Run.
func newDeliveryRig(tb testing.TB) *deliveryRig {
	tb.Helper()
	testtarget.RequireRoot(tb)
	bin := testtarget.Build(tb, "gosched", testtarget.Go126, testtarget.Plain)
	proc := testtarget.Start(tb, bin, "-wait")
	proc.WaitLine(tb, "ready", 30*time.Second) // and waits on stdin: idle
	p, err := plan.FromProcess(proc.PID())
	if err != nil {
		tb.Fatalf("plan: %v", err)
	}
	tr, err := Attach(p, Options{})
	if err != nil {
		tb.Fatalf("attach: %v", err)
	}
	r := &deliveryRig{tr: tr, kind: event.KindMalloc}
	tb.Cleanup(func() { tr.Close() })
	if err := r.load(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { r.objs.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- tr.Run(ctx, r.consume) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-ran; err != nil {
			tb.Errorf("run: %v", err)
		}
	})
	return r
}

// load loads deliver_events with the tracer's ring buffer, loss counters
// and wakeup threshold.
func (r *deliveryRig) load() error {
	spec, err := loadDelivery()
	if err != nil {
		return fmt.Errorf("load delivery spec: %w", err)
	}
	events, counters := r.tr.coll.Maps["events"], r.tr.coll.Maps["counters"]
	if events == nil || counters == nil {
		return errors.New("tracer lacks events or counters map")
	}
	// Sized as the tracer's (the ring resized, the counters of its header).
	spec.Maps["events"].MaxEntries = events.MaxEntries()
	spec.Maps["counters"].MaxEntries = counters.MaxEntries()
	var wakeup uint64
	if v := r.tr.coll.Variables["wakeup_bytes"]; v == nil || v.Get(&wakeup) != nil {
		wakeup = uint64(events.MaxEntries() / 4) // as setVariables
	}
	if err := setVar(spec, "wakeup_bytes", wakeup); err != nil {
		return err
	}
	opts := &ciliumebpf.CollectionOptions{MapReplacements: map[string]*ciliumebpf.Map{"events": events, "counters": counters}}
	if err := spec.LoadAndAssign(&r.objs, opts); err != nil {
		return fmt.Errorf("load deliver_events: %w", classify(err))
	}
	return nil
}

// consume is Run's callback: it checks each event of deliver_events and
// the order of their sequence numbers.
func (r *deliveryRig) consume(ev *event.Event) {
	if h := r.hold.Load(); h != nil {
		r.held.Store(true)
		<-*h
	}
	if ev.PC != deliveryMagic {
		r.foreign.Add(1)
		return
	}
	seq := ev.Goid
	switch {
	case ev.Kind != r.kind || ev.Aux != ^seq || ev.MID != -1 || ev.PID != -1 || ev.StackID != event.NoStack ||
		ev.Reason != 0 || ev.Flags != 0 || ev.TID != r.tid.Load():
		r.fail(fmt.Sprintf("event %d: %+v", seq, *ev))
	case seq < r.next:
		r.fail(fmt.Sprintf("event %d after %d: duplicated or reordered", seq, r.next-1))
	case ev.Ts < r.lastTs:
		r.fail(fmt.Sprintf("event %d at %d, before the previous one at %d", seq, ev.Ts, r.lastTs))
	}
	if seq >= r.next {
		r.gaps += seq - r.next
		r.next = seq + 1
	}
	r.lastTs = ev.Ts
	r.delivered.Add(1)
}

func (r *deliveryRig) fail(msg string) {
	if r.bad.Add(1) == 1 {
		r.badMsg.Store(&msg)
	}
}

// emit runs deliver_events for n events.
func (r *deliveryRig) emit(n uint32) error {
	ret, err := r.objs.DeliverEvents.Run(&ciliumebpf.RunOptions{Context: deliveryCtx{Count: n, Kind: uint32(r.kind)}})
	if err != nil {
		return fmt.Errorf("run deliver_events: %w", err)
	}
	if ret > n {
		return fmt.Errorf("deliver_events: %d queued of %d", int32(ret), n)
	}
	r.emitted += uint64(n)
	r.queued += uint64(ret)
	return nil
}

// deliveryRun is the outcome of a produce or burst.
type deliveryRun struct {
	emitted, queued, delivered, lost uint64
	produced                         time.Duration // producing
	elapsed                          time.Duration // until the last event was consumed
	bpfTime                          time.Duration // deliver_events' own (BPF stats)
}

// produce emits n events in batches from this goroutine (locked to its
// thread), at rate events a second or as fast as it can when rate is 0,
// then waits for the consumer to see every queued event.
func (r *deliveryRig) produce(n uint64, rate float64) (deliveryRun, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	r.tid.Store(uint32(syscall.Gettid()))
	before := r.snapshot()
	start := time.Now()
	for done := uint64(0); done < n; {
		b := min(n-done, deliveryBatch)
		if rate > 0 {
			if d := time.Until(start.Add(time.Duration(float64(done) / rate * 1e9))); d > 0 {
				time.Sleep(d)
			}
		}
		if err := r.emit(uint32(b)); err != nil {
			return deliveryRun{}, err
		}
		done += b
	}
	produced := time.Since(start)
	if err := r.wait(); err != nil {
		return deliveryRun{}, err
	}
	return r.since(before, produced, time.Since(start))
}

// burst emits n events while the consumer is held, then lets it go once it
// waits in the callback (it may first sleep a poll interval) and waits for
// it to see every queued event: elapsed is the consumer's time alone,
// produced the producer's. released, if not nil, is called just before the
// consumer is let go.
func (r *deliveryRig) burst(n uint64, released func()) (deliveryRun, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	r.tid.Store(uint32(syscall.Gettid()))
	h := make(chan struct{})
	r.held.Store(false)
	r.hold.Store(&h)
	defer func() {
		if h := r.hold.Swap(nil); h != nil {
			close(*h)
		}
	}()
	before := r.snapshot()
	start := time.Now()
	for done := uint64(0); done < n; {
		b := min(n-done, deliveryBatch)
		if err := r.emit(uint32(b)); err != nil {
			return deliveryRun{}, err
		}
		done += b
	}
	produced := time.Since(start)
	for deadline := time.Now().Add(time.Second); n > 0 && !r.held.Load(); time.Sleep(100 * time.Microsecond) {
		if time.Now().After(deadline) {
			return deliveryRun{}, errors.New("consumer not waiting in the callback")
		}
	}
	if released != nil {
		released()
	}
	start = time.Now()
	close(*r.hold.Swap(nil))
	if err := r.wait(); err != nil {
		return deliveryRun{}, err
	}
	return r.since(before, produced, time.Since(start))
}

// ringEvents is how many events the tracer's ring buffer holds (each with
// its 8-byte record header).
func (r *deliveryRig) ringEvents() uint64 {
	return uint64(r.tr.coll.Maps["events"].MaxEntries()) / (event.Size + 8)
}

// wait waits until the consumer has seen every queued event.
func (r *deliveryRig) wait() error {
	deadline := time.Now().Add(10 * time.Second)
	for r.delivered.Load() < r.queued {
		if time.Now().After(deadline) {
			return fmt.Errorf("consumer saw %d of %d queued events", r.delivered.Load(), r.queued)
		}
		time.Sleep(100 * time.Microsecond)
	}
	return nil
}

func (r *deliveryRig) snapshot() deliveryRun {
	return deliveryRun{emitted: r.emitted, queued: r.queued, delivered: r.delivered.Load(), lost: r.tr.Stats().Lost, bpfTime: r.bpfTime()}
}

// bpfTime is deliver_events' run time so far (with BPF stats enabled).
func (r *deliveryRig) bpfTime() time.Duration {
	if ps, err := r.objs.DeliverEvents.Stats(); err == nil {
		return ps.Runtime
	}
	return 0
}

// since returns the run since snapshot before, and checks the accounting.
func (r *deliveryRig) since(before deliveryRun, produced, elapsed time.Duration) (deliveryRun, error) {
	st := r.tr.Stats()
	run := deliveryRun{
		emitted:   r.emitted - before.emitted,
		queued:    r.queued - before.queued,
		delivered: r.delivered.Load() - before.delivered,
		lost:      st.Lost - before.lost,
		bpfTime:   r.bpfTime() - before.bpfTime,
		produced:  produced,
		elapsed:   elapsed,
	}
	return run, r.check(st)
}

// check verifies the accounting since the rig started: every event emitted
// was delivered once, in order, or counted lost, and nothing else.
func (r *deliveryRig) check(st Stats) error {
	var errs []error
	if n := r.bad.Load(); n > 0 {
		errs = append(errs, fmt.Errorf("%d bad events, first: %s", n, *r.badMsg.Load()))
	}
	var next uint64
	if err := r.objs.NextSeq.Get(&next); err != nil {
		errs = append(errs, fmt.Errorf("read next_seq: %w", err))
	} else if next != r.emitted {
		errs = append(errs, fmt.Errorf("next_seq %d, emitted %d", next, r.emitted))
	}
	delivered := r.delivered.Load()
	lostSeqs := r.gaps + (r.emitted - r.next) // skipped, and after the last seen
	if delivered != r.queued {
		errs = append(errs, fmt.Errorf("delivered %d, queued %d", delivered, r.queued))
	}
	if delivered+lostSeqs != r.emitted {
		errs = append(errs, fmt.Errorf("delivered %d + missing sequence numbers %d != emitted %d", delivered, lostSeqs, r.emitted))
	}
	// The target is idle: every loss counted is the producer's.
	var hits uint64
	for _, n := range st.Hits {
		hits += n
	}
	if st.Lost != r.emitted-r.queued {
		errs = append(errs, fmt.Errorf("tracer counted %d lost, deliver_events %d (target probe hits %d)", st.Lost, r.emitted-r.queued, hits))
	}
	if st.Events != delivered+r.foreign.Load() || st.DecodeErrors != 0 {
		errs = append(errs, fmt.Errorf("tracer decoded %d events (%d decode errors), callback saw %d and %d of the target",
			st.Events, st.DecodeErrors, delivered, r.foreign.Load()))
	}
	return errors.Join(errs...)
}

func (run *deliveryRun) add(o deliveryRun) {
	run.emitted += o.emitted
	run.queued += o.queued
	run.delivered += o.delivered
	run.lost += o.lost
	run.produced += o.produced
	run.elapsed += o.elapsed
	run.bpfTime += o.bpfTime
}

func (run *deliveryRun) String() string {
	return fmt.Sprintf("emitted %d in %v (%.2fM/s), delivered %d in %v (%.2fM/s), lost %d (%.2f%%)",
		run.emitted, run.produced.Round(time.Millisecond), float64(run.emitted)/run.produced.Seconds()/1e6,
		run.delivered, run.elapsed.Round(time.Millisecond), float64(run.delivered)/run.elapsed.Seconds()/1e6,
		run.lost, 100*float64(run.lost)/float64(max(run.emitted, 1)))
}

// TestEventDelivery runs deliver_events as fast as one producer can for two
// seconds into a tracer's ring buffer and checks that the tracer's Run
// delivers every queued event once, in order and intact, and that the
// events not delivered are exactly those the tracer counts lost; then it
// overflows the ring with the consumer held, so that some are.
func TestEventDelivery(t *testing.T) {
	r := newDeliveryRig(t)
	var tot deliveryRun
	for start := time.Now(); time.Since(start) < 2*time.Second; {
		run, err := r.produce(256*deliveryBatch, 0)
		if err != nil {
			t.Fatal(err)
		}
		tot.add(run)
	}
	t.Logf("max rate: %v; %d events of the target", &tot, r.foreign.Load())
	if tot.delivered+tot.lost != tot.emitted || tot.delivered == 0 {
		t.Fatalf("delivered %d + lost %d, emitted %d", tot.delivered, tot.lost, tot.emitted)
	}

	ring := r.ringEvents()
	run, err := r.burst(ring+ring/4, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("overflow (ring of %d events, consumer held): %v", ring, &run)
	// One event may be out of the ring already, in the held callback.
	if run.lost == 0 || run.delivered > ring+1 || run.delivered+run.lost != run.emitted {
		t.Fatalf("overflow: delivered %d + lost %d, emitted %d, ring of %d events", run.delivered, run.lost, run.emitted, ring)
	}
}

// BenchmarkEventDelivery measures the delivery pipeline (deliver_events into
// the tracer's ring buffer, its Run decoding, a checking callback) with one
// producer and one consumer. An op is an event emitted. "max" produces as
// fast as it can, "1M" at 1M events/s; events/s counts the events delivered
// until the last was consumed, emitted/s the producer's rate, lost the
// events the ring refused. "consumer" times the consumer alone, draining
// bursts of 1/5 of the ring (under the wakeup threshold, whose forced
// wakeups slow the producer) queued while it was held.
func BenchmarkEventDelivery(b *testing.B) {
	r := newDeliveryRig(b)
	if c, err := ciliumebpf.EnableStats(0); err == nil { // BPF_STATS_RUN_TIME
		defer c.Close()
	}
	report := func(b *testing.B, run deliveryRun) {
		b.ReportMetric(float64(run.delivered)/run.elapsed.Seconds(), "events/s")
		b.ReportMetric(float64(run.emitted)/run.produced.Seconds(), "emitted/s")
		b.ReportMetric(float64(run.lost), "lost")
		if run.bpfTime > 0 {
			b.ReportMetric(float64(run.bpfTime.Nanoseconds())/float64(run.emitted), "bpf-ns/event")
		}
	}
	for _, c := range []struct {
		name string
		rate float64
	}{{"max", 0}, {"1M", 1e6}} {
		b.Run(c.name, func(b *testing.B) {
			b.ResetTimer()
			run, err := r.produce(uint64(b.N), c.rate)
			b.StopTimer()
			if err != nil {
				b.Fatal(err)
			}
			report(b, run)
		})
	}
	b.Run("consumer", func(b *testing.B) {
		chunk := r.ringEvents() / 5
		var tot deliveryRun
		for done := uint64(0); done < uint64(b.N); {
			n := min(uint64(b.N)-done, chunk)
			b.StopTimer()
			run, err := r.burst(n, b.StartTimer)
			if err != nil {
				b.Fatal(err)
			}
			tot.add(run)
			done += n
		}
		b.StopTimer()
		report(b, tot)
	})
}
