/* Private: hand-split work for kernels that run either on an OpenMP team or
 * on the calling thread alone (nt == 1), without reaching any OpenMP
 * construct in the second case. That matters twice: a region opened for one
 * thread still costs ~0.5 us, and a kernel called from inside another
 * kernel's parallel region must not bind its worksharing to that region. */
#ifndef RETROPROP_TEAM_H
#define RETROPROP_TEAM_H


/* [*lo, *hi): thread tid's share of count items, in nt contiguous pieces
 * whose sizes differ by at most one (the first count % nt are larger). */
static inline void rp_static_share(int count, int tid, int nt, int *lo, int *hi)
{
    const int q = count / nt, r = count % nt;
    *lo = tid * q + (tid < r ? tid : r);
    *hi = *lo + q + (tid < r ? 1 : 0);
}

/* A thread's share of a loop that the others may help finish. The items
 * still unclaimed are [front, back), packed in one 64-bit word, so that the
 * owner (taking from the front) and a helper (taking from the back) each
 * claim with one compare-and-swap and no item is ever taken twice. Static
 * shares alone left one of two threads waiting 5-15% of a GEMM at its
 * barriers on a VM whose cores run at slightly different, varying speeds.
 * `ready` is the number of the phase whose inputs the owner has finished
 * preparing, for loops whose items read what the owner prepared. One cache
 * line each, so the owners' claims do not contend.
 *
 * The protocol: every shared loop is a phase that all threads of the team
 * run, ended by a barrier. The owner resets its queue at the start of the
 * phase and drains it; a helper that looks before the reset finds the last
 * phase's queue, which is empty (its owner drained it before the barrier),
 * and simply does not help. So queues start empty (rp_queues_init). A team
 * has at most RP_MAX_THREADS threads, so the queues (64 bytes a thread)
 * can live on the caller's stack. */
typedef struct {
    unsigned long long range;
    int ready;
    char pad[64 - sizeof(unsigned long long) - sizeof(int)];
} __attribute__((aligned(64))) rp_share_queue;

static inline void rp_queues_init(rp_share_queue *queues, int nt)
{
    for (int t = 0; t < nt; ++t) {
        queues[t].range = 0;
        queues[t].ready = -1;
    }
}

static inline void rp_queue_reset(rp_share_queue *q, int lo, int hi)
{
    __atomic_store_n(&q->range, ((unsigned long long)(unsigned)hi << 32) | (unsigned)lo,
                     __ATOMIC_RELAXED);
}

/* The owner's inputs for phase `phase` are written: helpers may start. */
static inline void rp_queue_publish(rp_share_queue *q, int phase)
{
    __atomic_store_n(&q->ready, phase, __ATOMIC_RELEASE);
}

/* Claims 1/divisor of what is left (at least one item) from the front or the
 * back; returns how many, the first in *first, or 0 once the queue is empty.
 * Chunks shrink as the queue empties, so the threads finish within about
 * one item of each other at the price of a few claims per share. */
static inline int rp_queue_take(rp_share_queue *q, int from_back, int divisor, int *first)
{
    unsigned long long r = __atomic_load_n(&q->range, __ATOMIC_RELAXED);
    for (;;) {
        const int lo = (int)(unsigned)(r & 0xffffffffu), hi = (int)(unsigned)(r >> 32);
        if (lo >= hi) return 0;
        const int take = (hi - lo) / divisor > 1 ? (hi - lo) / divisor : 1;
        const int new_lo = from_back ? lo : lo + take, new_hi = from_back ? hi - take : hi;
        const unsigned long long next = ((unsigned long long)(unsigned)new_hi << 32) | (unsigned)new_lo;
        if (__atomic_compare_exchange_n(&q->range, &r, next, 0, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED)) {
            *first = from_back ? new_hi : lo;
            return take;
        }
    }
}

/* How long a helper waits for an owner to publish its phase before it gives
 * up helping that owner: about 10-30 us of pause instructions. Waiting
 * longer only pays when the owner is running; on a busy machine (another
 * process on every core) the owner may have lost its core for a whole time
 * slice, milliseconds, and a helper spinning that long took its own core's
 * share from the owner's work: two threads ran 3-6x slower than one. The
 * owner drains its own queue anyway, so giving up never loses an item; the
 * helper goes on to the phase's barrier, which waits as the OpenMP runtime
 * is told to (retroprop sets a short spin, then a sleep: see runtime.py). */
#define RP_HELP_WAIT_TURNS 256

/* Whether the owner of q published phase `phase` within RP_HELP_WAIT_TURNS pauses. */
static inline int rp_queue_wait_published(const rp_share_queue *q, int phase)
{
    for (int turn = 0; turn < RP_HELP_WAIT_TURNS; ++turn) {
        if (__atomic_load_n(&q->ready, __ATOMIC_ACQUIRE) == phase) return 1;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
    return __atomic_load_n(&q->ready, __ATOMIC_ACQUIRE) == phase;
}

/* Items [first, first + count) of a shared loop. */
typedef void (*rp_items_fn)(void *context, int first, int count);

/* Thread tid's part of a phase: its own queue from the front, then the
 * others' from the back. With phase >= 0 a helper first waits until the
 * owner has published that phase (the items read what the owner prepared). */
static inline void rp_share_drain(rp_share_queue *queues, int tid, int nt, int phase,
                                  rp_items_fn run, void *context)
{
    int first, count;
    while ((count = rp_queue_take(&queues[tid], 0, 2 * nt, &first)) > 0)
        run(context, first, count);
    for (int other = 1; other < nt; ++other) {
        rp_share_queue *q = &queues[(tid + other) % nt];
        /* its owner may still be preparing what those items read: help only
         * once it has published them, and do not wait long for that */
        if (phase >= 0 && !rp_queue_wait_published(q, phase)) continue;
        while ((count = rp_queue_take(q, 1, 2 * nt, &first)) > 0)
            run(context, first, count);
    }
}

/* A shared loop over count items as one phase: the static shares, helped. */
static inline void rp_share_loop(rp_share_queue *queues, int tid, int nt, int count,
                                 rp_items_fn run, void *context)
{
    int lo, hi;
    rp_static_share(count, tid, nt, &lo, &hi);
    if (nt == 1) {
        if (hi > lo) run(context, lo, hi - lo);
        return;
    }
    rp_queue_reset(&queues[tid], lo, hi);
    rp_share_drain(queues, tid, nt, -1, run, context);
}

/* A barrier of the kernel's own team; nothing when it runs alone. */
#ifdef RETROPROP_HAVE_OPENMP
#define RP_TEAM_BARRIER(nt)                 \
    do {                                    \
        if ((nt) > 1) {                     \
            _Pragma("omp barrier")          \
        }                                   \
    } while (0)
#else
#define RP_TEAM_BARRIER(nt) ((void)(nt))
#endif

#endif
