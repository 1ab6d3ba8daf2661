/* Threads and SIMD dispatch state shared by every kernel. */
#include "retroprop/runtime.h"

#ifdef RETROPROP_HAVE_OPENMP
#include <omp.h>
#endif

#ifndef RETROPROP_COMPILER
#define RETROPROP_COMPILER "unknown"
#endif

/* -1 = not yet decided; resolved on first use so that importing the module
 * costs nothing and tests can lower it before any kernel runs. */
static int simd_level_in_use = -1;

int rp_get_num_threads(void)
{
#ifdef RETROPROP_HAVE_OPENMP
    const int n = omp_get_max_threads();
    return n < RP_MAX_THREADS ? n : RP_MAX_THREADS;
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
