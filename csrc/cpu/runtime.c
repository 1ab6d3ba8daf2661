/* Threads and SIMD dispatch state shared by every kernel. */
#include "retroprop/runtime.h"

#include <pthread.h>
#ifdef RETROPROP_HAVE_OPENMP
#include <omp.h>
#endif

/* Fork. GNU OpenMP keeps its worker threads in a pool that a fork does not
 * copy (only the forking thread exists in the child) and that it never
 * rebuilds: a child whose parent had run a multi-threaded region hung in its
 * first one, waiting at a barrier for threads that are not there.
 * (multiprocessing's default start method on Linux is fork, and data
 * loaders fork.) So the kernels record whether the process may have such a
 * pool (threads_used: a region for more than one thread may have run), and
 * a child forked after that runs every kernel on its calling thread
 * (single_threaded_child), which opens no team. A child forked before any
 * multi-threaded kernel keeps its threads. Flags only, in the child
 * handler: nothing there may take a lock. */
static volatile int threads_used = 0;
static volatile int single_threaded_child = 0;

static void after_fork_in_child(void)
{
    if (threads_used) single_threaded_child = 1;
}

__attribute__((constructor)) static void register_fork_handler(void)
{
    pthread_atfork(NULL, NULL, after_fork_in_child);
}

int rp_forked_single_threaded(void) { return single_threaded_child; }

#ifndef RETROPROP_COMPILER
#define RETROPROP_COMPILER "unknown"
#endif

/* -1 = not yet decided; resolved on first use so that importing the module
 * costs nothing and tests can lower it before any kernel runs. */
static int simd_level_in_use = -1;

int rp_get_num_threads(void)
{
#ifdef RETROPROP_HAVE_OPENMP
    if (single_threaded_child) return 1;
    const int max = omp_get_max_threads();
    const int n = max < RP_MAX_THREADS ? max : RP_MAX_THREADS;
    /* Every kernel sizes its team from here: more than one may open a pool. */
    if (n > 1 && !threads_used) threads_used = 1;
    return n;
#else
    return 1;
#endif
}

int rp_in_parallel(void)
{
#ifdef RETROPROP_HAVE_OPENMP
    return omp_in_parallel();
#else
    return 0;
#endif
}

void rp_set_num_threads(int n)
{
#ifdef RETROPROP_HAVE_OPENMP
    if (single_threaded_child) return;   /* no pool to run more threads in */
    if (n >= 1)
        omp_set_num_threads(n < RP_MAX_THREADS ? n : RP_MAX_THREADS);
#else
    (void)n;
#endif
}

rp_simd_level rp_simd_best(void)
{
#if defined(RETROPROP_HAVE_AVX2) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return RP_SIMD_AVX2;
#endif
    return RP_SIMD_GENERIC;
}

rp_simd_level rp_simd_in_use(void)
{
    if (simd_level_in_use < 0)
        simd_level_in_use = (int)rp_simd_best();
    return (rp_simd_level)simd_level_in_use;
}

rp_simd_level rp_simd_set(rp_simd_level level)
{
    rp_simd_level best = rp_simd_best();
    simd_level_in_use = (int)(level > best ? best : level);
    return (rp_simd_level)simd_level_in_use;
}

const char *rp_simd_name(rp_simd_level level)
{
    switch (level) {
    case RP_SIMD_AVX2: return "avx2+fma";
    default: return "generic";
    }
}

int rp_have_openmp(void)
{
#ifdef RETROPROP_HAVE_OPENMP
    return 1;
#else
    return 0;
#endif
}

const char *rp_compiler(void) { return RETROPROP_COMPILER; }
