/* Step programs: a model's planned step (forward, loss, backward,
 * regularizers, optimizer, metric) as an array of records, run in order in
 * one call.
 *
 * A record names a kernel and its arguments: sizes, scalars, and the arrays
 * as indices into the program's pointer table (so that the arrays that
 * change from one call to the next, the batch and its labels, change in one
 * place). Every record calls the kernel the layer-by-layer computation calls
 * (dense.h, loss.h, act.h, conv.h, pool.h, optim.h, rows.h), with the same
 * arguments, so the results are bit-identical to it; the program saves the
 * Python between the kernels. Nothing is checked here: the program's
 * builder (the binding, _core.pyx) checked every array, size and index once.
 *
 * Element type: float32 (the _f32 entry point) or float64 (_f64), for every
 * floating-point array of the program. */
#ifndef RETROPROP_PLAN_H
#define RETROPROP_PLAN_H

#include <stdint.h>
#include "retroprop/act.h"
#include "retroprop/conv.h"
#include "retroprop/optim.h"
#include "retroprop/pool.h"
#include "retroprop/rows.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What a record does. a[] lists the pointer-table indices of its arrays in
 * the order given (-1 for an optional array that is absent). */
typedef enum {
    RP_REC_DENSE_FWD = 0,       /* a: x, w, b, y.  n batch, m n_in, k n_out; act, p0 param:
                                 * y = act(x @ w + b) */
    RP_REC_DENSE_SOFTMAX_FWD,   /* a: x, w, b, logits, y: logits = x @ w + b, y = softmax rows */
    RP_REC_DENSE_BWD,           /* a: x, w, y, dy, dz, dw, db, dx (db, dx optional); act, p0:
                                 * rp_dense_backward */
    RP_REC_SOFTMAX_XENT,        /* a: z, labels (int64), targets, grad (labels or targets);
                                 * n rows, k classes, m output index, p0 weight: the mean
                                 * cross-entropy L of softmax(z); grad = w (softmax(z) - t) / n;
                                 * loss += w L, losses[m] = L */
    RP_REC_ACT_FWD,             /* a: x, y. n elements; act, p0: y = act(x) */
    RP_REC_ACT_BWD,             /* a: x, y, dy, dx (x or y optional); n, act, p0 */
    RP_REC_DROPOUT_FWD,         /* a: x, y, mask, rng. n elements; p0 rate, p1 scale: u drawn
                                 * per element in order, mask = u >= rate ? scale : 0,
                                 * y = x * mask. rng: with k 0 a numpy bitgen_t (u =
                                 * next_double), with k 1 a numpy PCG64's pcg64_state (the
                                 * same stream, inline and over threads) */
    RP_REC_MUL,                 /* a: x, m, y. n: y = x * m */
    RP_REC_ADD,                 /* a: x0, x1, y. n: y = x0 + x1 (y may be x0 or x1) */
    RP_REC_COPY,                /* a: x, y. n: y = x */
    RP_REC_COLS_IN,             /* a: x, y. n rows, m width, k offset, s row length of y:
                                 * y[r][k + j] = x[r][j] (a concatenation's part) */
    RP_REC_COLS_OUT,            /* a: x, y. n rows, m width, k offset, s row length of x:
                                 * y[r][j] = x[r][k + j] (its gradient's part) */
    RP_REC_CONV_FWD,            /* a: x, w, b, col, y (b, col optional); conv, act, chunk */
    RP_REC_CONV_BWD,            /* a: x, w, y, dy, col, dz, dw, db, dx (col, db, dx optional) */
    RP_REC_MAXPOOL_FWD,         /* a: x, y, argmax (int32); pool */
    RP_REC_MAXPOOL_BWD,         /* a: argmax, dy, dx; pool */
    RP_REC_AVGPOOL_FWD,         /* a: x, y; pool */
    RP_REC_AVGPOOL_BWD,         /* a: dy, dx; pool */
    RP_REC_PENALTY,             /* a: w, g (optional). n elements; p0 l1, p1 l2: loss += l1 sum|w| +
                                 * l2 sum w^2 (summed in double); g += l1 sign(w) + 2 l2 w,
                                 * in the element type, as regularizers.L1L2 does */
    RP_REC_CHECK_LOSS,          /* stop with status RP_PROGRAM_LOSS_NONFINITE unless the
                                 * loss is finite */
    RP_REC_OPTIMIZER,           /* the state's optimizer step over its tensors; stops with
                                 * RP_PROGRAM_STEP_REFUSED when its check refuses it */
    RP_REC_ACCURACY,            /* a: y, labels (int64), targets. n rows, k classes, m output
                                 * index: correct[m] = rows whose first largest y is the label
                                 * (or the first largest target) */
    RP_REC_OVERLAP_GATHER       /* n: the next n records (at most to the end of the run) run
                                 * on the calling thread while the others copy the state's
                                 * gather jobs, when that gather would run on several threads
                                 * and the records on one anyway */
} rp_record_kind;

#define RP_RECORD_ARRAYS 10
#define RP_PROGRAM_MAX_GATHERS 16

typedef struct {
    int kind;                   /* rp_record_kind */
    int act;                    /* rp_act */
    double p0, p1;
    long n, m, k, s;
    int chunk;                  /* convolution: images per im2col pass (0: pointwise) */
    int a[RP_RECORD_ARRAYS];
    rp_conv2d_geom conv;
    rp_pool2d_geom pool;
} rp_record;

typedef enum {
    RP_PROGRAM_OK = 0,
    RP_PROGRAM_LOSS_NONFINITE = 1,   /* CHECK_LOSS stopped the program */
    RP_PROGRAM_STEP_REFUSED = 2      /* the optimizer's check refused the step (first_bad) */
} rp_program_status;

/* What a run reads and leaves besides its arrays. */
typedef struct {
    double loss;                     /* weighted losses + penalties, added up by the records */
    double *losses;                  /* per output (SOFTMAX_XENT), or NULL */
    long *correct;                   /* per output (ACCURACY), or NULL */
    int status;                      /* rp_program_status */
    long first_bad;                  /* the optimizer's refused tensor, or -1 */
    rp_opt_config opt;
    const rp_opt_tensor *tensors;
    int n_tensors;
    rp_opt_mode mode;
    rp_opt_bounds *bounds;           /* with RP_OPT_CHECK_APPLY: the tracked step; or NULL */
    const rp_rows_gather *gather;    /* rows to copy during the run (the next batch: one job
                                      * per model input), n_gather jobs, or NULL */
    int n_gather;
    int gathered;                    /* set once the gather is done */
} rp_program_state;

/* Runs records [begin, end) with the pointer table ptrs; stops after a
 * record that sets a nonzero status. With finish != 0 the state's gather is
 * done before returning if no OVERLAP_GATHER did it (whatever the status).
 * Returns the index of the first record not run. */
int rp_program_run_f32(const rp_record *records, int begin, int end, void *const *ptrs,
                       rp_program_state *state, int finish);
int rp_program_run_f64(const rp_record *records, int begin, int end, void *const *ptrs,
                       rp_program_state *state, int finish);

/* n draws of NumPy's PCG64 next_double from its pcg64_state (the layout the
 * dropout record assumes; the binding compares them with NumPy's). */
void rp_pcg64_uniform(void *pcg64_state, long n, double *out);

#ifdef __cplusplus
}
#endif
#endif
