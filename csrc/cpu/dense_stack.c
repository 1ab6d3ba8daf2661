/* A dense stack's training step in one call (retroprop/dense_stack.h): the
 * same kernel calls, in the same order, as Dense.forward, the fused softmax
 * cross-entropy, Dense.backward_from_logits / backward and the optimizer's
 * check-then-apply step; and the forward alone. */
#include <math.h>
#include "retroprop/dense.h"
#include "retroprop/dense_stack.h"
#include "retroprop/loss.h"
#include "retroprop/runtime.h"
#include "loss_internal.h"
#ifdef RETROPROP_HAVE_OPENMP
#include <omp.h>
#endif

/* What the top layer's part of a step reads and writes (either element type). */
typedef struct {
    int batch, n_layers;
    const rp_dense_stack_layer *layers;
    const void *x;
    const int64_t *labels;
    const void *targets;
    void *logits;
} top_step_args;

typedef double (*top_step_fn)(const top_step_args *args);

/* Runs the top layer's part of a step and copies the next batch's rows
 * (when there is one). The top layer of a classifier is small (at batch
 * 128 of a 784-256-128-10 MLP, ~30 us of a ~0.9 ms step) and runs on one
 * thread, so the calling thread works through it while the rest of the
 * team copies rows, and then joins them: the copy, a wait on memory for
 * every row, mostly happens while a core would otherwise idle. The top
 * layer's kernels see themselves inside a parallel region and run on the
 * calling thread, which changes no result: the overlap is used only when
 * they would run on one thread anyway (the cross-entropy's sum is the one
 * result that depends on the thread count, RP_LOSS_ROWS_PARALLEL_MIN), and
 * only for a batch that rp_gather_rows would copy on several threads (a
 * small model's small batch opens no parallel region at all). */
static double top_step_while_gathering(top_step_fn top_step, const top_step_args *args,
                                       int n_classes, const rp_rows_gather *next_batch)
{
    double loss = 0.0;
#ifdef RETROPROP_HAVE_OPENMP
    long next_row = 0;
    const int nt = next_batch && next_batch->count > 0
                       ? rp_gather_threads(next_batch->row_bytes, next_batch->count) : 1;
    if (nt > 1 && (long)args->batch * n_classes < RP_LOSS_ROWS_PARALLEL_MIN) {
#pragma omp parallel num_threads(nt)
        {
            if (omp_get_thread_num() == 0) loss = top_step(args);
            rp_gather_rows_claimed(next_batch, &next_row);
        }
        return loss;
    }
#endif
    (void)n_classes;
    loss = top_step(args);
    if (next_batch && next_batch->count > 0)
        rp_gather_rows(next_batch->row_bytes, next_batch->n_rows, next_batch->x,
                       next_batch->count, next_batch->index, next_batch->out);
    return loss;
}

#define DEFINE_STACK(SUFFIX, REAL)                                                            \
    /* y of layers [0, end), from x */                                                        \
    static void forward_layers_##SUFFIX(int batch, int end, const rp_dense_stack_layer *layers, \
                                        const REAL *x)                                        \
    {                                                                                         \
        const REAL *in = x;                                                                   \
        for (int l = 0; l < end; ++l) {                                                       \
            const rp_dense_stack_layer *L = &layers[l];                                       \
            rp_dense_forward_##SUFFIX(batch, L->n_in, L->n_out, in, (const REAL *)L->w,       \
                                      (const REAL *)L->b, L->act, L->act_param, (REAL *)L->y); \
            in = (const REAL *)L->y;                                                          \
        }                                                                                     \
    }                                                                                         \
                                                                                              \
    /* The last layer, a softmax: logits and probabilities, from the layer below's y. */     \
    static void forward_softmax_top_##SUFFIX(int batch, int n_layers,                         \
                                             const rp_dense_stack_layer *layers, const REAL *x, \
                                             REAL *logits)                                    \
    {                                                                                         \
        const int last = n_layers - 1;                                                        \
        const rp_dense_stack_layer *top = &layers[last];                                      \
        const REAL *in = last == 0 ? x : (const REAL *)layers[last - 1].y;                    \
        rp_dense_forward_softmax_##SUFFIX(batch, top->n_in, top->n_out, in,                   \
                                          (const REAL *)top->w, (const REAL *)top->b, logits, \
                                          (REAL *)top->y);                                    \
    }                                                                                         \
                                                                                              \
    void rp_dense_stack_forward_##SUFFIX(int batch, int n_layers,                             \
                                         const rp_dense_stack_layer *layers, const REAL *x,  \
                                         REAL *logits)                                        \
    {                                                                                         \
        const int last = n_layers - 1;                                                        \
        if (!logits) {                                                                        \
            forward_layers_##SUFFIX(batch, n_layers, layers, x);                              \
            return;                                                                           \
        }                                                                                     \
        forward_layers_##SUFFIX(batch, last, layers, x);                                      \
        forward_softmax_top_##SUFFIX(batch, n_layers, layers, x, logits);                     \
    }                                                                                         \
                                                                                              \
    /* The top layer's part of a step: its forward, the loss and dL/dlogits,                  \
     * and, when the loss is finite (the Trainer checks it before backward),                  \
     * its backward. The top layer is linear in its logits; dz may be dy itself. */           \
    static double top_step_##SUFFIX(const top_step_args *a)                                   \
    {                                                                                         \
        const int last = a->n_layers - 1;                                                     \
        const rp_dense_stack_layer *top = &a->layers[last];                                   \
        const REAL *in = last == 0 ? (const REAL *)a->x : (const REAL *)a->layers[last - 1].y; \
        REAL *logits = (REAL *)a->logits;                                                     \
        forward_softmax_top_##SUFFIX(a->batch, a->n_layers, a->layers, (const REAL *)a->x,    \
                                     logits);                                                 \
        const double loss = rp_softmax_xent_##SUFFIX(a->batch, top->n_out, logits, a->labels, \
                                                     (const REAL *)a->targets,                \
                                                     (REAL *)top->dz);                        \
        if (isfinite(loss))                                                                   \
            rp_dense_backward_##SUFFIX(a->batch, top->n_in, top->n_out, in,                   \
                                       (const REAL *)top->w, logits, (const REAL *)top->dz,   \
                                       RP_ACT_LINEAR, 0.0, (REAL *)top->dz, (REAL *)top->dw,  \
                                       (REAL *)top->db, last == 0 ? NULL : (REAL *)top->dx);  \
        return loss;                                                                          \
    }                                                                                         \
                                                                                              \
    rp_stack_status rp_dense_stack_step_##SUFFIX(                                             \
        int batch, int n_layers, const rp_dense_stack_layer *layers, const REAL *x,           \
        const int64_t *labels, const REAL *targets, REAL *logits, const rp_opt_config *opt,   \
        const rp_opt_tensor *tensors, int n_tensors, rp_opt_mode mode,                        \
        const rp_rows_gather *next_batch, rp_opt_bounds *bounds, double *loss,               \
        long *first_bad)                                                                      \
    {                                                                                         \
        const int last = n_layers - 1;                                                        \
        *first_bad = -1;                                                                      \
        forward_layers_##SUFFIX(batch, last, layers, x);                                      \
        const top_step_args top = {batch, n_layers, layers, x, labels, targets, logits};      \
        *loss = top_step_while_gathering(top_step_##SUFFIX, &top, layers[last].n_out,         \
                                         next_batch);                                         \
        if (!isfinite(*loss)) return RP_STACK_LOSS_NONFINITE;                                 \
        for (int l = last - 1; l >= 0; --l) {                                                 \
            const rp_dense_stack_layer *L = &layers[l];                                       \
            const REAL *layer_in = l == 0 ? x : (const REAL *)layers[l - 1].y;                \
            rp_dense_backward_##SUFFIX(batch, L->n_in, L->n_out, layer_in, (const REAL *)L->w, \
                                       (const REAL *)L->y, (const REAL *)layers[l + 1].dx,    \
                                       L->act, L->act_param, (REAL *)L->dz, (REAL *)L->dw,    \
                                       (REAL *)L->db, l == 0 ? NULL : (REAL *)L->dx);         \
        }                                                                                     \
        if (bounds && mode == RP_OPT_CHECK_APPLY) {                                           \
            *first_bad = rp_optimizer_step_tracked_##SUFFIX(opt, tensors, n_tensors, bounds,    \
                                                            NULL);                    \
        } else {                                                                              \
            if (bounds) bounds->valid = 0;                                                    \
            *first_bad = rp_optimizer_step_##SUFFIX(opt, tensors, n_tensors, mode, NULL);     \
        }                                                                                     \
        return *first_bad >= 0 ? RP_STACK_STEP_REFUSED : RP_STACK_APPLIED;                    \
    }

DEFINE_STACK(f32, float)
DEFINE_STACK(f64, double)
