//go:build ignore

/* gmpwatch.bpf.c: uprobe programs on the Go runtime's scheduler.
 *
 * One program per probe-plan program name (analysis/plan Probe.Program).
 * Every program filters on the target's tgid first, then fills a
 * struct gmp_event from the registers (Go amd64 ABIInternal) and from the
 * runtime's g, m and p structures, whose field offsets the loader sets as
 * const volatile variables from the plan before load.
 *
 * The programs never write to the target and never run on function return.
 */

#include <linux/bpf.h>
#include <asm/ptrace.h>
#include <bpf/bpf_helpers.h>

#include "gmpwatch.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Target filter: events from other processes mapping the binary are ignored. */
const volatile __u32 target_tgid = 0;

/* Struct field offsets (plan.Offsets), -1 when the layout has no such field. */
const volatile __s64 off_g_m = 48;
const volatile __s64 off_g_goid = 152;
const volatile __s64 off_g_status = 144;
const volatile __s64 off_g_gopc = 288;
const volatile __s64 off_g_startpc = 304;
const volatile __s64 off_g_parent_goid = -1;
const volatile __s64 off_g_schedlink = 160;
const volatile __s64 off_m_g0 = 0;
const volatile __s64 off_m_id = 232;
const volatile __s64 off_m_procid = 64;
const volatile __s64 off_m_curg = 184;
const volatile __s64 off_m_p = 208;
const volatile __s64 off_p_id = 0;
const volatile __s64 off_glist_head = 0;
const volatile __s64 off_m_oldp = -1;
const volatile __s64 off_p_status = -1;

/* Before go1.26 an M in a syscall keeps its P in m.oldp with the P in
 * _Psyscall (2) until sysmon retakes it; 1.26 leaves it in m.p. ~0: unused. */
const volatile __u32 psyscall_status = ~0u;
/* Argument register of mProf_Malloc's size: 2 (BX) for mProf_Malloc(p, size)
 * before go1.23, 3 (CX) for mProf_Malloc(mp, p, size). */
const volatile __u8 mprof_size_arg = 3;
/* Capture user stacks (about 8us a stack on the test machine). */
const volatile __u8 capture_stacks = 1;

/* Bytes of runtime.m read at once from its start, covering m.g0, m.curg,
 * m.p and m.id (the loader sets it; 0 reads the fields one by one). */
const volatile __u32 m_span = 0;

/* goschedImpl(gp, preempted): go1.19's goschedImpl(gp) has no second arg. */
const volatile __u8 gosched_has_preempted = 1;
/* Bound on the injectglist walk. */
const volatile __u32 inject_max = 65536;
/* Write events to the ring buffer. 0: aggregate-only, the programs update
 * the counters and the aggregates below and write nothing (nor take stacks). */
const volatile __u8 stream_events = 1;
/* Programs (bit 1 << PROG_x) that write no event although stream_events is
 * on: their figures come from the aggregates (a live view under a budget). */
const volatile __u64 stream_off = 0;
/* Keep the in-kernel aggregates (runnable_since, sched_lat, parked_since,
 * wait_stats, site_counts). 0: none of their map operations run (the
 * verifier drops the code). */
const volatile __u8 aggregate = 1;

/* Per program: hits at [prog], suppressed morestack re-entries at
 * [PROG_COUNT + prog]. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2 * PROG_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} hits SEC(".maps");

/* User stacks, by the id that events carry in stack_id. Without
 * BPF_F_REUSE_STACKID an id, once given, keeps its stack: a different stack
 * hashing to a taken bucket is lost (counted) instead. */
struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 1 << 15); /* resized by the loader */
	__uint(key_size, sizeof(__u32));
	__uint(value_size, GMP_STACK_DEPTH * sizeof(__u64));
} stacks SEC(".maps");

/* The creation stack taken at runtime.newproc's entry on the user G, kept per
 * thread for the GoCreate that newproc's systemstack part emits next on g0. */
struct creation {
	__u64 g;  /* the G that ran the go statement */
	__u64 pc; /* its return address from newproc: the new G's gopc */
	__s64 stack_id;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct creation);
} creations SEC(".maps");

/* In-kernel aggregates: figures that need no per-event record.
 *
 * A goroutine's runnable stamp is set where the events mark it runnable
 * (GoCreate, GoUnpark from ready and injectglist, GoSched) with the event's
 * time, and consumed by its next start (GoStart, execute): the difference is
 * its scheduling latency, counted in sched_lat. A park stamp is set at gopark
 * and consumed by the unpark (ready, injectglist) or, when no unpark was seen
 * (netpoll handing a G straight to its M, a park whose unlock function
 * failed), by the start: the wait is added to its reason. Starts and unparks
 * without a stamp (the G was runnable or parked before the attach, its stamp
 * was evicted, or a path without probe made it runnable) are counted. */

/* goid -> time it became runnable (bpf_ktime_get_ns, the events' clock). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 17);
	__type(key, __u64);
	__type(value, __u64);
} runnable_since SEC(".maps");

/* Scheduling latency, in the runtime's timeHistogram layout (one entry). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct time_hist);
} sched_lat SEC(".maps");

/* goid -> when and why it parked. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 17);
	__type(key, __u64);
	__type(value, struct park_stamp);
} parked_since SEC(".maps");

/* Parks and ended waits by wait reason. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, GMP_WAIT_REASONS);
	__type(key, __u32);
	__type(value, struct wait_agg);
} wait_stats SEC(".maps");

/* Creation PC (g.gopc) -> goroutines created there and exited. Not LRU: a
 * site is never evicted (its counts would silently restart); when full, new
 * sites are counted in CNT_SITES_FULL instead. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct site_agg);
} site_counts SEC(".maps");

/* Keeps struct gmp_event in the BTF for bpf2go -type (checked in tests). */
struct gmp_event *unused_gmp_event __attribute__((unused));

static __always_inline void hit(__u32 prog)
{
	__u64 *v = bpf_map_lookup_elem(&hits, &prog);
	if (v)
		*v += 1;
}

/* streams says whether program prog writes events. */
static __always_inline int streams(__u32 prog)
{
	return stream_events && !(stream_off & (1ULL << prog));
}

static __always_inline void count_refire(__u32 prog)
{
	count(CNT_REFIRE);
	hit(PROG_COUNT + prog);
}

static __always_inline __u64 rd64(__u64 base, __s64 off)
{
	__u64 v = 0;
	if (!base || off < 0)
		return 0;
	if (bpf_probe_read_user(&v, sizeof(v), (void *)(base + off)) < 0)
		count(CNT_READ_ERR);
	return v;
}

static __always_inline __u32 rd32(__u64 base, __s64 off)
{
	__u32 v = 0;
	if (!base || off < 0)
		return 0;
	if (bpf_probe_read_user(&v, sizeof(v), (void *)(base + off)) < 0)
		count(CNT_READ_ERR);
	return v;
}

/* in_target returns the thread id, or 0 when the probe fired elsewhere. */
static __always_inline __u32 in_target(void)
{
	__u64 id = bpf_get_current_pid_tgid();
	if ((__u32)(id >> 32) != target_tgid)
		return 0;
	return (__u32)id;
}

/* user_stack captures the user stack by frame pointers (from regs->bp) and
 * returns its id, or GMP_NO_STACK (counted) when the kernel gave none. */
static __always_inline __s32 user_stack(struct pt_regs *ctx)
{
	long id;
	if (!capture_stacks || !stream_events)
		return GMP_NO_STACK;
	id = bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK);
	if (id < 0) {
		count(CNT_STACK_LOST);
		return GMP_NO_STACK;
	}
	return (__s32)id;
}

/* caller_pc is the return address of the probed function (probe at entry). */
static __always_inline __u64 caller_pc(struct pt_regs *ctx, __u64 cookie)
{
	return rd64(GO_SP(ctx), (cookie & COOKIE_FRAME_PUSHED) ? 8 : 0);
}

/* Where the probe fired: the current g, its M and that M's fields. */
struct here {
	__u64 g;    /* R14 */
	__u64 m;    /* g.m */
	__u64 g0;   /* m.g0 */
	__u64 curg; /* m.curg */
	__u64 p;    /* m.p */
	__s64 mid;  /* m.id, -1 without an M */
	__u32 tid;
};

#define M_WORDS 32 /* m_span is at most M_WORDS*8 bytes */

static __always_inline void locate(struct pt_regs *ctx, struct here *h, __u32 tid)
{
	h->g = GO_G(ctx);
	h->m = rd64(h->g, off_g_m);
	h->tid = tid;
	if (m_span) {
		/* One read for the four fields (a helper call is the cost). */
		__u64 buf[M_WORDS];
		__u32 size = m_span;
		if (size > M_WORDS * 8)
			size = M_WORDS * 8;
		if (size < 8)
			size = 8;
		/* Called even for a nil m: a failed read zeroes buf. */
		if (bpf_probe_read_user(buf, size, (void *)h->m) < 0 && h->m)
			count(CNT_READ_ERR);
		h->g0 = buf[((__u64)off_m_g0 >> 3) & (M_WORDS - 1)];
		h->curg = buf[((__u64)off_m_curg >> 3) & (M_WORDS - 1)];
		h->p = buf[((__u64)off_m_p >> 3) & (M_WORDS - 1)];
		h->mid = h->m ? (__s64)buf[((__u64)off_m_id >> 3) & (M_WORDS - 1)] : -1;
	} else {
		h->g0 = rd64(h->m, off_m_g0);
		h->curg = rd64(h->m, off_m_curg);
		h->p = rd64(h->m, off_m_p);
		h->mid = h->m ? (__s64)rd64(h->m, off_m_id) : -1;
	}
}

/* user_g returns the user goroutine on whose behalf the M runs: the current
 * g when it is not g0, else m.curg (0 when none). */
static __always_inline __u64 user_g(struct here *h)
{
	if (h->g && h->g != h->g0)
		return h->g;
	return h->curg;
}

static __always_inline void fill_at(struct gmp_event *e, struct here *h, __u16 kind, __u64 ts)
{
	e->ts = ts;
	e->goid = 0;
	e->aux = 0;
	e->pc = 0;
	e->pc2 = 0;
	e->tid = h->tid;
	e->stack_id = GMP_NO_STACK;
	e->kind = kind;
	e->reason = 0;
	e->flags = (h->g && h->g == h->g0) ? GMP_FLAG_FROM_G0 : 0;
	e->mid = h->mid;
	e->pid = h->p ? (__s32)rd32(h->p, off_p_id) : -1;
}

static __always_inline void fill(struct gmp_event *e, struct here *h, __u16 kind)
{
	fill_at(e, h, kind, bpf_ktime_get_ns());
}

/* len64 is the minimum number of bits to represent x (Go's bits.Len64). */
static __always_inline __u32 len64(__u64 x)
{
	__u32 n = 0;
	if (x >> 32) {
		x >>= 32;
		n += 32;
	}
	if (x >> 16) {
		x >>= 16;
		n += 16;
	}
	if (x >> 8) {
		x >>= 8;
		n += 8;
	}
	if (x >> 4) {
		x >>= 4;
		n += 4;
	}
	if (x >> 2) {
		x >>= 2;
		n += 2;
	}
	if (x >> 1) {
		x >>= 1;
		n += 1;
	}
	return n + (__u32)x;
}

/* hist_record is the runtime's timeHistogram.record (go1.20+) on this CPU's
 * sched_lat. Atomic adds: a program preempted by another on the same CPU
 * loses no count. */
static __always_inline void hist_record(__s64 d)
{
	__u32 zero = 0, bit, bucket, idx;
	struct time_hist *h = bpf_map_lookup_elem(&sched_lat, &zero);
	if (!h)
		return;
	if (d < 0) {
		__sync_fetch_and_add(&h->underflow, 1);
		return;
	}
	bit = len64((__u64)d);
	if (bit < TIME_HIST_MIN_BUCKET_BITS) {
		bit = TIME_HIST_MIN_BUCKET_BITS;
		bucket = 0;
	} else {
		bucket = bit - TIME_HIST_MIN_BUCKET_BITS + 1;
	}
	if (bucket >= TIME_HIST_NUM_BUCKETS) {
		__sync_fetch_and_add(&h->overflow, 1);
		return;
	}
	idx = bucket * TIME_HIST_NUM_SUB_BUCKETS +
	      (__u32)(((__u64)d >> (bit - 1 - TIME_HIST_SUB_BUCKET_BITS)) & (TIME_HIST_NUM_SUB_BUCKETS - 1));
	/* Spelled out for the verifier. */
	asm volatile("" : "+r"(idx));
	if (idx >= TIME_HIST_COUNTS)
		return;
	__sync_fetch_and_add(&h->counts[idx], 1);
}

/* agg_runnable stamps goid runnable at now. The latest transition wins: a G
 * is made runnable again only after a start (which consumes the stamp). */
static __always_inline void agg_runnable(__u64 goid, __u64 now)
{
	if (!aggregate || !goid)
		return;
	bpf_map_update_elem(&runnable_since, &goid, &now, BPF_ANY);
}

/* agg_wait_end ends goid's wait at now, if its park was seen. Only the
 * program whose delete succeeds counts it. */
static __always_inline void agg_wait_end(__u64 goid, __u64 now, int at_unpark)
{
	struct park_stamp *ps;
	struct wait_agg *w;
	__u64 since;
	__u32 reason;
	if (!aggregate || !goid)
		return;
	ps = bpf_map_lookup_elem(&parked_since, &goid);
	if (!ps) {
		if (at_unpark)
			count(CNT_UNPARK_UNSTAMPED);
		return;
	}
	since = ps->ts;
	reason = ps->reason;
	if (bpf_map_delete_elem(&parked_since, &goid) != 0)
		return;
	w = bpf_map_lookup_elem(&wait_stats, &reason);
	if (!w)
		return;
	__sync_fetch_and_add(&w->waits, 1);
	if (now > since)
		__sync_fetch_and_add(&w->wait_ns, now - since);
}

/* agg_unpark: a waiting G becomes runnable (ready, injectglist). */
static __always_inline void agg_unpark(__u64 goid, __u64 now)
{
	agg_wait_end(goid, now, 1);
	agg_runnable(goid, now);
}

/* agg_start: goid starts running (execute). */
static __always_inline void agg_start(__u64 goid, __u64 now)
{
	__u64 *since, t;
	if (!aggregate || !goid)
		return;
	since = bpf_map_lookup_elem(&runnable_since, &goid);
	if (since) {
		t = *since;
		if (bpf_map_delete_elem(&runnable_since, &goid) == 0)
			hist_record((__s64)(now - t));
	} else {
		count(CNT_START_UNSTAMPED);
		/* Made runnable without an unpark probe: a wait ends here. */
		agg_wait_end(goid, now, 0);
	}
}

/* agg_park: goid parks at now for reason. */
static __always_inline void agg_park(__u64 goid, __u8 reason, __u64 now)
{
	struct park_stamp ps = {.ts = now, .reason = reason};
	struct wait_agg *w;
	__u32 key = reason;
	if (!aggregate || !goid)
		return;
	bpf_map_update_elem(&parked_since, &goid, &ps, BPF_ANY);
	w = bpf_map_lookup_elem(&wait_stats, &key);
	if (w)
		__sync_fetch_and_add(&w->parks, 1);
}

/* agg_site adds one creation (exit 0) or exit (exit 1) to site pc. */
static __always_inline void agg_site(__u64 pc, int exit)
{
	struct site_agg *v, n = {};
	if (!aggregate)
		return;
	v = bpf_map_lookup_elem(&site_counts, &pc);
	if (!v) {
		/* A new element's other CPUs' values are zeroed. */
		if (exit)
			n.exited = 1;
		else
			n.created = 1;
		if (bpf_map_update_elem(&site_counts, &pc, &n, BPF_NOEXIST) == 0)
			return;
		v = bpf_map_lookup_elem(&site_counts, &pc); /* lost a race, or full */
		if (!v) {
			count(CNT_SITES_FULL);
			return;
		}
	}
	if (exit)
		__sync_fetch_and_add(&v->exited, 1);
	else
		__sync_fetch_and_add(&v->created, 1);
}

/* refire reports whether this hit is the first of the two hits of a call
 * that re-enters through morestack, and must not be counted. A refiring
 * probe sits on the stack check's JBE (the plan refuses any other), where the
 * CMP's flags are live: the branch is taken (CF or ZF set) exactly when the
 * call goes to morestack, whether to grow the stack or for a preemption
 * request, and comes back to its entry. Both hits are counted for the
 * program (hits), this one as a refire (refires). */
static __always_inline int refire(struct pt_regs *ctx, __u64 cookie, __u32 prog)
{
	if ((cookie & COOKIE_REFIRES) && (GO_FLAGS(ctx) & (X86_CF | X86_ZF))) {
		count_refire(prog);
		return 1;
	}
	return 0;
}

/* runtime.schedule(): the M enters the scheduler (on g0). */
SEC("uprobe")
int schedule(struct pt_regs *ctx)
{
	struct here h;
	struct gmp_event *e;
	__u32 tid = in_target();
	if (!tid)
		return 0;
	hit(PROG_SCHEDULE);
	if (refire(ctx, bpf_get_attach_cookie(ctx), PROG_SCHEDULE))
		return 0;
	if (!stream_events)
		return 0;
	locate(ctx, &h, tid);
	e = reserve();
	if (!e)
		return 0;
	fill(e, &h, GMP_SCHEDULE);
	e->goid = rd64(h.curg, off_g_goid);
	submit(e);
	return 0;
}

/* runtime.execute(gp AX, inheritTime BL): gp starts running (on g0). */
SEC("uprobe")
int execute(struct pt_regs *ctx)
{
	struct here h;
	struct gmp_event *e;
	__u64 gp = GO_ARG1(ctx), goid, now;
	__u32 tid = in_target();
	if (!tid)
		return 0;
	hit(PROG_EXECUTE);
	if (refire(ctx, bpf_get_attach_cookie(ctx), PROG_EXECUTE))
		return 0;
	goid = rd64(gp, off_g_goid);
	if (stream_events)
		locate(ctx, &h, tid);
	now = bpf_ktime_get_ns();
	agg_start(goid, now);
	if (!stream_events)
		return 0;
	e = reserve();
	if (!e)
		return 0;
	fill_at(e, &h, GMP_GO_START, now);
	e->goid = goid;
	submit(e);
	return 0;
}

/* runtime.gopark(unlockf AX, lock BX, reason CL, ...) on the parking G. */
SEC("uprobe")
int gopark(struct pt_regs *ctx)
{
	struct here h;
	struct gmp_event *e;
	__s32 stack = GMP_NO_STACK;
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__u64 goid, now;
	__u8 reason = (__u8)GO_ARG3(ctx);
	__u32 tid = in_target();
	if (!tid)
		return 0;
	hit(PROG_GOPARK);
	if (refire(ctx, cookie, PROG_GOPARK))
		return 0;
	goid = rd64(GO_G(ctx), off_g_goid);
	if (stream_events) {
		locate(ctx, &h, tid);
		stack = user_stack(ctx);
	}
	now = bpf_ktime_get_ns();
	agg_park(goid, reason, now);
	if (!stream_events)
		return 0;
	e = reserve();
	if (!e)
		return 0;
	fill_at(e, &h, GMP_GO_PARK, now);
	e->goid = goid;
	e->reason = reason;
	e->pc = caller_pc(ctx, cookie);
	e->stack_id = stack;
	submit(e);
	return 0;
}

/* runtime.ready(gp AX, traceskip BX, next CL): gp becomes runnable. */
SEC("uprobe")
int ready(struct pt_regs *ctx)
{
	struct here h;
	struct gmp_event *e;
	__u64 gp = GO_ARG1(ctx), goid, now;
	__u32 tid = in_target();
	if (!tid)
		return 0;
	hit(PROG_READY);
	if (refire(ctx, bpf_get_attach_cookie(ctx), PROG_READY))
		return 0;
	goid = rd64(gp, off_g_goid);
	if (streams(PROG_READY))
		locate(ctx, &h, tid);
	now = bpf_ktime_get_ns();
	agg_unpark(goid, now);
	if (!streams(PROG_READY))
		return 0;
	e = reserve();
	if (!e)
		return 0;
	fill_at(e, &h, GMP_GO_UNPARK, now);
	e->goid = goid;
	e->aux = rd64(user_g(&h), off_g_goid);
	submit(e);
	return 0;
}

/* runtime.goschedImpl(gp AX, preempted BL) on g0: gp yields. */
SEC("uprobe")
int goschedImpl(struct pt_regs *ctx)
{
	struct here h;
	struct gmp_event *e;
	__u64 gp = GO_ARG1(ctx), goid, now;
	__u32 tid = in_target();
	if (!tid)
		return 0;
	hit(PROG_GOSCHED_IMPL);
	if (refire(ctx, bpf_get_attach_cookie(ctx), PROG_GOSCHED_IMPL))
		return 0;
	goid = rd64(gp, off_g_goid);
	if (stream_events)
		locate(ctx, &h, tid);
	now = bpf_ktime_get_ns();
	agg_runnable(goid, now);
	if (!stream_events)
		return 0;
	e = reserve();
	if (!e)
		return 0;
	fill_at(e, &h, GMP_GO_SCHED, now);
	e->goid = goid;
	if (gosched_has_preempted)
		e->reason = (__u8)GO_ARG2(ctx) & 1;
	submit(e);
	return 0;
}

/* runtime.goexit0(gp AX) on g0: gp's life ends. */
SEC("uprobe")
int goexit0(struct pt_regs *ctx)
{
	struct here h;
	struct gmp_event *e;
	__u64 gp = GO_ARG1(ctx), gopc;
	__u32 tid = in_target();
	if (!tid)
		return 0;
	hit(PROG_GOEXIT0);
	if (refire(ctx, bpf_get_attach_cookie(ctx), PROG_GOEXIT0))
		return 0;
	gopc = rd64(gp, off_g_gopc);
	agg_site(gopc, 1);
	if (!stream_events)
		return 0;
	locate(ctx, &h, tid);
	e = reserve();
	if (!e)
		return 0;
	fill(e, &h, GMP_GO_EXIT);
	e->goid = rd64(gp, off_g_goid);
	e->pc = gopc;
	e->pc2 = rd64(gp, off_g_startpc);
	submit(e);
	return 0;
}

static __always_inline int go_create(struct pt_regs *ctx, __u32 prog, __u64 newg, int check_parked)
{
	struct here h;
	struct gmp_event *e;
	struct creation *c;
	__u64 parent, goid, gopc, now;
	int parked;
	__u32 tid = in_target();
	if (!tid)
		return 0;
	hit(prog);
	if (refire(ctx, bpf_get_attach_cookie(ctx), prog))
		return 0;
	goid = rd64(newg, off_g_goid);
	gopc = rd64(newg, off_g_gopc);
	parked = check_parked && (rd32(newg, off_g_status) & ~0x1000u) == 4;
	if (streams(prog))
		locate(ctx, &h, tid);
	now = bpf_ktime_get_ns();
	agg_site(gopc, 0);
	if (!parked)
		agg_runnable(goid, now);
	if (!streams(prog))
		return 0;
	e = reserve();
	if (!e)
		return 0;
	fill_at(e, &h, GMP_GO_CREATE, now);
	parent = user_g(&h);
	e->goid = goid;
	e->aux = rd64(parent, off_g_goid);
	e->pc = gopc;
	e->pc2 = rd64(newg, off_g_startpc);
	if (parked)
		e->flags |= GMP_FLAG_PARKED;
	/* The stack newproc stashed, if this creation is that go statement's. */
	c = bpf_map_lookup_elem(&creations, &tid);
	if (c && c->g == parent && c->pc == e->pc)
		e->stack_id = (__s32)c->stack_id;
	submit(e);
	return 0;
}

/* The CALL runtime.runqput in runtime.newproc.func1 (on g0): runqput(pp AX,
 * newg BX, next CL). The parent is the G that ran the go statement,
 * g0.m.curg. */
SEC("uprobe")
int newproc_runqput(struct pt_regs *ctx)
{
	return go_create(ctx, PROG_NEWPROC_RUNQPUT, GO_ARG2(ctx), 0);
}

/* A RET of runtime.newproc1: the new g in AX. */
SEC("uprobe")
int newproc1_ret(struct pt_regs *ctx)
{
	return go_create(ctx, PROG_NEWPROC1_RET, GO_ARG1(ctx), 1);
}

/* runtime.newm(fn AX, pp BX, id CX): a new M (thread) is started. */
SEC("uprobe")
int newm(struct pt_regs *ctx)
{
	struct here h;
	struct gmp_event *e;
	__s32 stack;
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__u32 tid = in_target();
	if (!tid)
		return 0;
	hit(PROG_NEWM);
	if (refire(ctx, cookie, PROG_NEWM))
		return 0;
	if (!stream_events)
		return 0;
	locate(ctx, &h, tid);
	stack = user_stack(ctx);
	e = reserve();
	if (!e)
		return 0;
	fill(e, &h, GMP_THREAD_CREATE);
	e->goid = rd64(user_g(&h), off_g_goid);
	e->aux = GO_ARG3(ctx);
	e->pc = caller_pc(ctx, cookie);
	e->stack_id = stack;
	submit(e);
	return 0;
}

struct inject_ctx {
	struct gmp_event tmpl;
	__u64 gp;
};

static long inject_one(__u64 i, void *data)
{
	struct inject_ctx *c = data;
	struct gmp_event *e;
	__u64 goid, now;

	if (!c->gp)
		return 1;
	goid = rd64(c->gp, off_g_goid);
	now = bpf_ktime_get_ns();
	agg_unpark(goid, now);
	if (streams(PROG_INJECTGLIST)) {
		e = reserve();
		if (e) {
			*e = c->tmpl;
			e->ts = now;
			e->goid = goid;
			submit(e);
		}
	}
	c->gp = rd64(c->gp, off_g_schedlink);
	return 0;
}

/* runtime.injectglist(glist *gList AX): every G on the list (head, then
 * through g.schedlink) becomes runnable. */
SEC("uprobe")
int injectglist(struct pt_regs *ctx)
{
	struct here h;
	struct inject_ctx c;
	__u32 tid = in_target();
	if (!tid)
		return 0;
	hit(PROG_INJECTGLIST);
	if (refire(ctx, bpf_get_attach_cookie(ctx), PROG_INJECTGLIST))
		return 0;
	if (!streams(PROG_INJECTGLIST) && !aggregate)
		return 0;
	c.gp = rd64(GO_ARG1(ctx), off_glist_head);
	if (!c.gp)
		return 0;
	if (streams(PROG_INJECTGLIST)) {
		locate(ctx, &h, tid);
		fill(&c.tmpl, &h, GMP_GO_UNPARK);
		c.tmpl.aux = rd64(user_g(&h), off_g_goid);
	}
	bpf_loop(inject_max, inject_one, &c, 0);
	if (c.gp)
		count(CNT_TRUNCATED);
	return 0;
}

/* runtime.casgstatus(gp AX, old BX, new CX): every status change (opt-in). */
SEC("uprobe")
int casgstatus(struct pt_regs *ctx)
{
	struct here h;
	struct gmp_event *e;
	__u64 gp = GO_ARG1(ctx);
	__u32 tid = in_target();
	if (!tid)
		return 0;
	hit(PROG_CASGSTATUS);
	if (refire(ctx, bpf_get_attach_cookie(ctx), PROG_CASGSTATUS))
		return 0;
	if (!stream_events)
		return 0;
	locate(ctx, &h, tid);
	e = reserve();
	if (!e)
		return 0;
	fill(e, &h, GMP_STATUS);
	e->goid = rd64(gp, off_g_goid);
	e->aux = (__u32)GO_ARG2(ctx);
	e->reason = (__u8)GO_ARG3(ctx);
	submit(e);
	return 0;
}

/* runtime.newproc(fn AX) on the G that runs the go statement: no event; the
 * creation stack is stashed for the GoCreate that follows on this thread. */
SEC("uprobe")
int newproc(struct pt_regs *ctx)
{
	struct creation c;
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__u32 tid = in_target();
	if (!tid)
		return 0;
	hit(PROG_NEWPROC);
	if (refire(ctx, cookie, PROG_NEWPROC))
		return 0;
	if (!stream_events)
		return 0; /* the stack is for the GoCreate event only */
	c.g = GO_G(ctx);
	c.pc = caller_pc(ctx, cookie);
	c.stack_id = user_stack(ctx);
	bpf_map_update_elem(&creations, &tid, &c, BPF_ANY);
	return 0;
}

/* runtime.entersyscall() on the G entering the syscall (nosplit, offset 0). */
SEC("uprobe")
int entersyscall(struct pt_regs *ctx)
{
	struct here h;
	struct gmp_event *e;
	__s32 stack;
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__u32 tid = in_target();
	if (!tid)
		return 0;
	hit(PROG_ENTERSYSCALL);
	if (refire(ctx, cookie, PROG_ENTERSYSCALL))
		return 0;
	if (!stream_events)
		return 0;
	locate(ctx, &h, tid);
	stack = user_stack(ctx);
	e = reserve();
	if (!e)
		return 0;
	fill(e, &h, GMP_SYSCALL_ENTER);
	e->goid = rd64(h.g, off_g_goid);
	e->pc = caller_pc(ctx, cookie);
	e->stack_id = stack;
	submit(e);
	return 0;
}

/* runtime.exitsyscall() on the G leaving the syscall (nosplit, offset 0).
 * PID is the P the M still holds (m.p; before go1.26 m.oldp while it is in
 * _Psyscall); Reason 1 when it holds none: the P was handed off. */
SEC("uprobe")
int exitsyscall(struct pt_regs *ctx)
{
	struct here h;
	struct gmp_event *e;
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__u64 p;
	__u32 tid = in_target();
	if (!tid)
		return 0;
	hit(PROG_EXITSYSCALL);
	if (refire(ctx, cookie, PROG_EXITSYSCALL))
		return 0;
	if (!stream_events)
		return 0;
	locate(ctx, &h, tid);
	p = h.p;
	if (!p && psyscall_status != ~0u) {
		__u64 oldp = rd64(h.m, off_m_oldp);
		if (oldp && rd32(oldp, off_p_status) == psyscall_status)
			p = oldp;
	}
	e = reserve();
	if (!e)
		return 0;
	fill(e, &h, GMP_SYSCALL_EXIT);
	e->goid = rd64(h.g, off_g_goid);
	e->pc = caller_pc(ctx, cookie);
	if (p) {
		if (p != h.p)
			e->pid = (__s32)rd32(p, off_p_id);
	} else {
		e->reason = 1;
	}
	submit(e);
	return 0;
}

/* runtime.mProf_Malloc([mp AX,] p, size): a sampled allocation. */
SEC("uprobe")
int mProf_Malloc(struct pt_regs *ctx)
{
	struct here h;
	struct gmp_event *e;
	__s32 stack;
	__u64 cookie = bpf_get_attach_cookie(ctx);
	/* Both registers read, then chosen: the verifier refuses a load
	 * through a computed ctx offset. */
	__u64 bx = GO_ARG2(ctx), cx = GO_ARG3(ctx);
	__u64 size;
	__u32 tid = in_target();
	if (!tid)
		return 0;
	hit(PROG_MPROF_MALLOC);
	asm volatile("" : "+r"(bx), "+r"(cx));
	size = mprof_size_arg == 2 ? bx : cx;
	if (refire(ctx, cookie, PROG_MPROF_MALLOC))
		return 0;
	if (!stream_events)
		return 0;
	locate(ctx, &h, tid);
	stack = user_stack(ctx);
	e = reserve();
	if (!e)
		return 0;
	fill(e, &h, GMP_ALLOC);
	e->goid = rd64(user_g(&h), off_g_goid);
	e->aux = size;
	e->pc = caller_pc(ctx, cookie);
	e->stack_id = stack;
	submit(e);
	return 0;
}

/* runtime.(*mheap).grow(h AX, npage BX): the heap asks the OS for more. */
SEC("uprobe")
int mheap_grow(struct pt_regs *ctx)
{
	struct here h;
	struct gmp_event *e;
	__u32 tid = in_target();
	if (!tid)
		return 0;
	hit(PROG_MHEAP_GROW);
	if (refire(ctx, bpf_get_attach_cookie(ctx), PROG_MHEAP_GROW))
		return 0;
	if (!stream_events)
		return 0;
	locate(ctx, &h, tid);
	e = reserve();
	if (!e)
		return 0;
	fill(e, &h, GMP_HEAP_GROW);
	e->goid = rd64(user_g(&h), off_g_goid);
	e->aux = GO_ARG2(ctx) * 8192; /* runtime pageSize */
	submit(e);
	return 0;
}

/* runtime.newosproc(mp AX): the clone of mp's thread. */
SEC("uprobe")
int newosproc(struct pt_regs *ctx)
{
	struct here h;
	struct gmp_event *e;
	__u64 mp = GO_ARG1(ctx);
	__u32 tid = in_target();
	if (!tid)
		return 0;
	hit(PROG_NEWOSPROC);
	if (refire(ctx, bpf_get_attach_cookie(ctx), PROG_NEWOSPROC))
		return 0;
	if (!stream_events)
		return 0;
	locate(ctx, &h, tid);
	e = reserve();
	if (!e)
		return 0;
	fill(e, &h, GMP_THREAD_START);
	e->goid = rd64(user_g(&h), off_g_goid);
	e->aux = rd64(mp, off_m_id);
	submit(e);
	return 0;
}

/* chansend(c AX, ep BX, block CL, callerpc DI) / chanrecv(c AX, ep BX, block CL). */
static __always_inline int chan_op(struct pt_regs *ctx, __u32 prog, __u16 kind)
{
	struct here h;
	struct gmp_event *e;
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__u32 tid = in_target();
	if (!tid)
		return 0;
	hit(prog);
	/* Not ep: it points into the stack, which a re-entry has moved. */
	if (refire(ctx, cookie, prog))
		return 0;
	if (!stream_events)
		return 0;
	locate(ctx, &h, tid);
	e = reserve();
	if (!e)
		return 0;
	fill(e, &h, kind);
	e->goid = rd64(h.g, off_g_goid);
	e->aux = GO_ARG1(ctx);
	e->reason = (__u8)GO_ARG3(ctx) & 1;
	e->pc = caller_pc(ctx, cookie);
	submit(e);
	return 0;
}

SEC("uprobe")
int chansend(struct pt_regs *ctx)
{
	return chan_op(ctx, PROG_CHANSEND, GMP_CHAN_SEND);
}

SEC("uprobe")
int chanrecv(struct pt_regs *ctx)
{
	return chan_op(ctx, PROG_CHANRECV, GMP_CHAN_RECV);
}

/* runtime.mallocgc(size AX, typ BX, needzero CL): every allocation (opt-in). */
SEC("uprobe")
int mallocgc(struct pt_regs *ctx)
{
	struct here h;
	struct gmp_event *e;
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__u32 tid = in_target();
	if (!tid)
		return 0;
	hit(PROG_MALLOCGC);
	if (refire(ctx, cookie, PROG_MALLOCGC))
		return 0;
	if (!stream_events)
		return 0;
	locate(ctx, &h, tid);
	e = reserve();
	if (!e)
		return 0;
	fill(e, &h, GMP_MALLOC);
	e->goid = rd64(user_g(&h), off_g_goid);
	e->aux = GO_ARG1(ctx);
	e->pc = caller_pc(ctx, cookie);
	submit(e);
	return 0;
}

/* runtime.gmpwatchProbeGoStatus(goid AX, from BX, to CX, reason DIL, pid SI,
 * mid R8, aux R9, pc R10, pc2 R11): the stable attach point that the
 * probe-points runtime patch (patches/probe-points) calls at every goroutine
 * transition, with the data in registers: no struct offsets are needed but
 * the M's, read once (as every program does) to tell whether it runs on g0.
 * The transition (from, to) tells the event kind. */
SEC("uprobe")
int probe_points(struct pt_regs *ctx)
{
	struct here h;
	struct gmp_event *e;
	__u32 from = (__u32)GO_ARG2(ctx), to = (__u32)GO_ARG3(ctx);
	__u64 goid, now;
	__u16 kind;
	__u32 tid = in_target();
	if (!tid)
		return 0;
	hit(PROG_PROBE_POINTS);
	if (from == G_DEAD)
		kind = GMP_GO_CREATE;
	else if (from == G_RUNNABLE && to == G_RUNNING)
		kind = GMP_GO_START;
	else if (from == G_RUNNING && to == G_WAITING)
		kind = GMP_GO_PARK;
	else if (from == G_WAITING && to == G_RUNNABLE)
		kind = GMP_GO_UNPARK;
	else if (from == G_RUNNING && to == G_RUNNABLE)
		kind = GMP_GO_SCHED;
	else if (from == G_RUNNING && to == G_DEAD)
		kind = GMP_GO_EXIT;
	else
		return 0;
	if (stream_events)
		locate(ctx, &h, tid);
	now = bpf_ktime_get_ns();
	goid = GO_ARG1(ctx);
	switch (kind) {
	case GMP_GO_CREATE:
		agg_site(GO_ARG8(ctx), 0);
		if (to != G_WAITING)
			agg_runnable(goid, now);
		break;
	case GMP_GO_START:
		agg_start(goid, now);
		break;
	case GMP_GO_PARK:
		agg_park(goid, (__u8)GO_ARG4(ctx), now);
		break;
	case GMP_GO_UNPARK:
		agg_unpark(goid, now);
		break;
	case GMP_GO_SCHED:
		agg_runnable(goid, now);
		break;
	case GMP_GO_EXIT:
		agg_site(GO_ARG8(ctx), 1);
		break;
	}
	if (!stream_events)
		return 0;
	e = reserve();
	if (!e)
		return 0;
	fill_at(e, &h, kind, now);
	e->goid = GO_ARG1(ctx);
	e->aux = (kind == GMP_GO_CREATE || kind == GMP_GO_UNPARK) ? GO_ARG7(ctx) : 0;
	e->pc = GO_ARG8(ctx);
	e->pc2 = GO_ARG9(ctx);
	e->mid = (__s64)GO_ARG6(ctx);
	e->pid = (__s32)GO_ARG5(ctx);
	e->reason = (kind == GMP_GO_PARK || kind == GMP_GO_SCHED) ? (__u8)GO_ARG4(ctx) : 0;
	if (kind == GMP_GO_CREATE && to == G_WAITING)
		e->flags |= GMP_FLAG_PARKED;
	submit(e);
	return 0;
}
