/* y = act(a + b) in one pass (see retroprop/residual.h): a residual block's
 * sum and the ReLU after it, or, with act linear, the sum of the gradients
 * of its two paths. Linear and relu are plain loops the compiler
 * vectorises; other activations go through the scalar formulas. The
 * element-type dependent part is written once below the #else and
 * instantiated for float and double by including this file twice. */
#ifndef RP_RESIDUAL_TEMPLATE

#include "retroprop/residual.h"
#include "retroprop/runtime.h"
#include "act_internal.h"
#include "act_scalar.h"

#define RP_RESIDUAL_TEMPLATE 1
#define REAL float
#define FN(name) name##_f32
#include "residual.c"
#undef REAL
#undef FN

#define REAL double
#define FN(name) name##_f64
#include "residual.c"
#undef REAL
#undef FN

#else /* RP_RESIDUAL_TEMPLATE */

void FN(rp_add_act)(size_t n, const REAL *a, const REAL *b, rp_act act, double param, REAL *y)
{
    const long count = (long)n;
    const int nt = count < RP_ELEMENTWISE_PARALLEL_MIN ? 1 : rp_get_num_threads();
    const REAL p = (REAL)param;
    (void)nt;
    if (act == RP_ACT_LINEAR) {
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
        for (long i = 0; i < count; ++i) y[i] = a[i] + b[i];
    } else if (act == RP_ACT_RELU) {
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
        for (long i = 0; i < count; ++i) {
            const REAL v = a[i] + b[i];
            y[i] = v < (REAL)0 ? (REAL)0 : v;   /* keeps NaN, as the GEMM's max(0, v) */
        }
    } else {
#ifdef RETROPROP_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(nt)
#endif
        for (long i = 0; i < count; ++i) y[i] = FN(rp_act_apply)(act, p, a[i] + b[i]);
    }
}

#endif /* RP_RESIDUAL_TEMPLATE */
