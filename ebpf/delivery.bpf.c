//go:build ignore

/* delivery.bpf.c: a load generator for the event delivery pipeline.
 *
 * Uprobes cannot fire a million times a second (a trap costs microseconds),
 * so the delivery tests run deliver_events with BPF_PROG_RUN instead: it
 * writes ctx->count events of kind ctx->kind into the ring buffer, reserving
 * and submitting as gmpwatch.bpf.c does and counting failed reservations in
 * counters[CNT_LOST]. The loader replaces events and counters with a
 * tracer's maps, so the tracer's reader consumes the events and its Stats
 * count the loss.
 *
 * Every event emitted, queued or lost, takes the next sequence number (goid),
 * so a consumer can tell which were lost. The program returns how many of the
 * ctx->count were queued.
 */

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "gmpwatch.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* In pc, to tell these events from a target's. */
#define DELIVERY_MAGIC 0x79726576696c6564ULL /* "delivery" */

/* As in gmpwatch.bpf.c: the loader sets the tracer's threshold. */
const volatile __u64 wakeup_bytes = 1 << 20;

/* The sequence number of the next event emitted. */
__u64 next_seq = 0;

/* Replaced by the tracer's maps of the same definitions. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 24); /* set to the tracer's size */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct delivery_ctx {
	__u32 count;
	__u32 kind;
};

struct delivery_state {
	__u64 seq;
	__u32 sent;
	__u32 tid;
	__u16 kind;
};

/* count, reserve and submit are gmpwatch.bpf.c's. */
static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		*v += 1;
}

static __always_inline struct gmp_event *reserve(void)
{
	struct gmp_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		count(CNT_LOST);
	return e;
}

static __always_inline void submit(struct gmp_event *e)
{
	__u64 flags = BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes)
		flags = BPF_RB_FORCE_WAKEUP;
	bpf_ringbuf_submit(e, flags);
}

static long deliver_one(__u64 i, void *data)
{
	struct delivery_state *s = data;
	__u64 seq = s->seq++;
	struct gmp_event *e = reserve();

	if (!e)
		return 0;
	e->ts = bpf_ktime_get_ns();
	e->goid = seq;
	e->aux = ~seq;
	e->pc = DELIVERY_MAGIC;
	e->pc2 = i;
	e->mid = -1;
	e->tid = s->tid;
	e->pid = -1;
	e->stack_id = GMP_NO_STACK;
	e->kind = s->kind;
	e->reason = 0;
	e->flags = 0;
	submit(e);
	s->sent++;
	return 0;
}

/* deliver_events emits ctx->count events (at most 1<<23, bpf_loop's bound)
 * and returns how many were queued, or -1 when it emitted none. */
SEC("syscall")
int deliver_events(struct delivery_ctx *ctx)
{
	struct delivery_state s = {
		.seq = next_seq,
		.tid = (__u32)bpf_get_current_pid_tgid(),
		.kind = (__u16)ctx->kind,
	};

	if (bpf_loop(ctx->count, deliver_one, &s, 0) < 0)
		return -1;
	next_seq = s.seq;
	return s.sent;
}
