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

/* The ring buffer events, the counters, reserve and submit: the loader
 * replaces both maps with a tracer's, and sets its wakeup_bytes. */
#include "gmpwatch.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* In pc, to tell these events from a target's. */
#define DELIVERY_MAGIC 0x79726576696c6564ULL /* "delivery" */

/* The sequence number of the next event emitted. */
__u64 next_seq = 0;

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
