/* Run-time facts and knobs shared by every kernel: threads and the SIMD level. */
#ifndef RETROPROP_RUNTIME_H
#define RETROPROP_RUNTIME_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    RP_SIMD_GENERIC = 0, /* portable C, any CPU */
    RP_SIMD_AVX2 = 1     /* AVX2 + FMA microkernels */
} rp_simd_level;

/* Threads used by the OpenMP kernels (1 when built without OpenMP), at
 * most RP_MAX_THREADS: a larger request (or OMP_NUM_THREADS) is clamped.
 * Asking OpenMP for 100,000 threads crashed the process. */
#define RP_MAX_THREADS 512
int rp_get_num_threads(void);
void rp_set_num_threads(int n);
/* True inside an active parallel region (a kernel called by another
 * kernel's threads): kernels then run on the calling thread alone. */
int rp_in_parallel(void);
/* True in a process forked after the kernels had run on several threads:
 * the OpenMP runtime's threads do not exist there, so rp_get_num_threads()
 * is 1 and rp_set_num_threads() has no effect (runtime.c). */
int rp_forked_single_threaded(void);

/* The best level this CPU and this build support, and the one in use. */
rp_simd_level rp_simd_best(void);
rp_simd_level rp_simd_in_use(void);
/* Use a lower level than the best (tests compare both paths); a request
 * above rp_simd_best() is clamped to it. Returns the level now in use. */
rp_simd_level rp_simd_set(rp_simd_level level);
const char *rp_simd_name(rp_simd_level level);

int rp_have_openmp(void);
const char *rp_compiler(void);

#ifdef __cplusplus
}
#endif
#endif
