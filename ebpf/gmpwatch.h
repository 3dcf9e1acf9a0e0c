/* gmpwatch.h: shared definitions of gmpwatch's BPF programs.
 *
 * struct gmp_event mirrors analysis/event.Event byte for byte (64 bytes,
 * little endian); the Go side checks the size at generation time through
 * bpf2go's -type output and in the package tests.
 */
#ifndef GMPWATCH_H
#define GMPWATCH_H

#include <linux/types.h>

/* Event kinds: analysis/event.Kind. Append, never renumber. */
enum gmp_kind {
	GMP_INVALID = 0,
	GMP_GO_CREATE = 1,
	GMP_GO_START = 2,
	GMP_GO_PARK = 3,
	GMP_GO_UNPARK = 4,
	GMP_GO_SCHED = 5,
	GMP_GO_EXIT = 6,
	GMP_SCHEDULE = 7,
	GMP_THREAD_CREATE = 8,
	GMP_SYSCALL_ENTER = 9,
	GMP_SYSCALL_EXIT = 10,
	GMP_STATUS = 11,
	GMP_ALLOC = 12,
	GMP_HEAP_GROW = 13,
	GMP_THREAD_START = 14,
	GMP_CHAN_SEND = 15,
	GMP_CHAN_RECV = 16,
	GMP_MALLOC = 17,
};

/* Event flags: analysis/event.Flag*. */
#define GMP_FLAG_PARKED 0x01

/* G statuses (g.atomicstatus), the same in every supported release. */
#define G_RUNNABLE 1
#define G_RUNNING 2
#define G_WAITING 4
#define G_DEAD 6
#define GMP_FLAG_FROM_G0 0x02

#define GMP_NO_STACK (-1)

/* User stacks (BPF_MAP_TYPE_STACK_TRACE "stacks"): at most this many frames,
 * leaf first; frame 0 is the probed instruction. */
#define GMP_STACK_DEPTH 64

struct gmp_event {
	__u64 ts;       /*  0: CLOCK_MONOTONIC ns */
	__u64 goid;     /*  8: subject goroutine */
	__u64 aux;      /* 16: kind-specific */
	__u64 pc;       /* 24: kind-specific */
	__u64 pc2;      /* 32: kind-specific */
	__s64 mid;      /* 40: m.id, -1 unknown */
	__u32 tid;      /* 48: kernel thread id */
	__s32 pid;      /* 52: p.id, -1 when the M holds no P */
	__s32 stack_id; /* 56: GMP_NO_STACK */
	__u16 kind;     /* 60 */
	__u8 reason;    /* 62 */
	__u8 flags;     /* 63 */
};

_Static_assert(sizeof(struct gmp_event) == 64, "gmp_event must be 64 bytes");

/* Program ids: index of the per-program hit counters. The Go loader has the
 * same table (programIDs in ebpf.go). */
enum gmp_prog {
	PROG_SCHEDULE = 0,
	PROG_EXECUTE,
	PROG_GOPARK,
	PROG_READY,
	PROG_GOSCHED_IMPL,
	PROG_GOEXIT0,
	PROG_NEWPROC_RUNQPUT,
	PROG_NEWPROC1_RET,
	PROG_NEWM,
	PROG_INJECTGLIST,
	PROG_CASGSTATUS,
	PROG_ENTERSYSCALL,
	PROG_EXITSYSCALL,
	PROG_MPROF_MALLOC,
	PROG_MHEAP_GROW,
	PROG_NEWOSPROC,
	PROG_MALLOCGC,
	PROG_NEWPROC,
	PROG_CHANSEND,
	PROG_CHANRECV,
	PROG_PROBE_POINTS,
	PROG_COUNT,
};

/* Indexes of the per-CPU counters array. */
enum gmp_counter {
	CNT_LOST = 0,       /* ring buffer reservation failed: event lost */
	CNT_REFIRE,         /* morestack re-entry suppressed (not an event) */
	CNT_TRUNCATED,      /* injectglist list longer than the walk bound */
	CNT_READ_ERR,       /* a read of the target's memory failed */
	CNT_STACK_LOST,     /* bpf_get_stackid failed (hash bucket taken, no stack) */
	/* Aggregates (read by aggregate.go, not by Stats). */
	CNT_START_UNSTAMPED,  /* a start without runnable stamp: no latency */
	CNT_UNPARK_UNSTAMPED, /* an unpark without park stamp: no wait */
	CNT_SITES_FULL,       /* site_counts full: a creation or exit not counted */
	CNT_COUNT,
};

/* In-kernel aggregates (aggregate.go mirrors these structs). */

/* The Go runtime's timeHistogram of go1.20 and later (runtime/histogram.go),
 * field for field: counts by bucket and sub-bucket, then underflow (negative
 * durations) and overflow (>= 2^47 ns). Bucket 0 holds [0, 2^8) ns; bucket
 * b >= 1 holds [2^(b+7), 2^(b+8)); each is split into 4 equal sub-buckets. */
#define TIME_HIST_MIN_BUCKET_BITS 9
#define TIME_HIST_MAX_BUCKET_BITS 48 /* exclusive */
#define TIME_HIST_SUB_BUCKET_BITS 2
#define TIME_HIST_NUM_SUB_BUCKETS (1 << TIME_HIST_SUB_BUCKET_BITS)
#define TIME_HIST_NUM_BUCKETS (TIME_HIST_MAX_BUCKET_BITS - TIME_HIST_MIN_BUCKET_BITS + 1)
#define TIME_HIST_COUNTS (TIME_HIST_NUM_BUCKETS * TIME_HIST_NUM_SUB_BUCKETS)

struct time_hist {
	__u64 counts[TIME_HIST_COUNTS];
	__u64 underflow;
	__u64 overflow;
};

_Static_assert(sizeof(struct time_hist) == (40 * 4 + 2) * 8, "time_hist is the runtime's timeHistogram");

/* Wait reasons are a byte (the runtime has about 50): one slot each. */
#define GMP_WAIT_REASONS 256

/* parked_since values: when the G parked and why. */
struct park_stamp {
	__u64 ts;
	__u8 reason;
	__u8 pad[7];
};

/* wait_stats values, by wait reason. */
struct wait_agg {
	__u64 parks;   /* GoPark with this reason */
	__u64 waits;   /* waits of this reason that ended (unpark, or start) */
	__u64 wait_ns; /* their total length */
};

/* site_counts values, by creation PC (g.gopc). */
struct site_agg {
	__u64 created;
	__u64 exited;
};

/* Attach cookie bits, set per probe by the loader. */
#define COOKIE_FRAME_PUSHED 0x1 /* return address at 8(SP), not 0(SP) */
#define COOKIE_REFIRES 0x2      /* on the stack check's JBE: may fire twice */

/* x86 EFLAGS bits. */
#define X86_CF 0x0001
#define X86_ZF 0x0040

/* Go amd64 ABIInternal: integer arguments in AX, BX, CX, DI, SI, R8..R11;
 * the current g in R14. ctx is the uapi struct pt_regs. */
#define GO_ARG1(ctx) ((ctx)->rax)
#define GO_ARG2(ctx) ((ctx)->rbx)
#define GO_ARG3(ctx) ((ctx)->rcx)
#define GO_ARG4(ctx) ((ctx)->rdi)
#define GO_ARG5(ctx) ((ctx)->rsi)
#define GO_ARG6(ctx) ((ctx)->r8)
#define GO_ARG7(ctx) ((ctx)->r9)
#define GO_ARG8(ctx) ((ctx)->r10)
#define GO_ARG9(ctx) ((ctx)->r11)
#define GO_G(ctx) ((ctx)->r14)
#define GO_SP(ctx) ((ctx)->rsp)
#define GO_FLAGS(ctx) ((ctx)->eflags)

/* The ring buffer, the counters and the helpers that write them: one
 * definition for every BPF object that writes events (gmpwatch.bpf.c, and
 * delivery.bpf.c, whose loader hands it a tracer's very maps). Include
 * after <linux/bpf.h> and <bpf/bpf_helpers.h>. */

/* Wake the reader once this many bytes wait in the ring (0: always). */
const volatile __u64 wakeup_bytes = 1 << 20;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 24); /* resized by the loader */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		*v += 1;
}

/* reserve takes room for an event, or counts it lost. */
static __always_inline struct gmp_event *reserve(void)
{
	struct gmp_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		count(CNT_LOST);
	return e;
}

/* The reader's position at the last forced wakeup (racy across CPUs: at
 * worst a wakeup too many). */
__u64 woken_at = ~0ULL;

/* submit queues an event without waking the reader (it polls every 20 ms)
 * unless wakeup_bytes wait, and then once per position of the reader: a
 * reader that lags would otherwise be woken by every submit, several µs of
 * the target's time each. */
static __always_inline void submit(struct gmp_event *e)
{
	__u64 flags = BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes) {
		__u64 cons = bpf_ringbuf_query(&events, BPF_RB_CONS_POS);
		if (cons != woken_at) {
			woken_at = cons;
			flags = BPF_RB_FORCE_WAKEUP;
		}
	}
	bpf_ringbuf_submit(e, flags);
}

#endif /* GMPWATCH_H */
