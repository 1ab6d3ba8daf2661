/* One whole training step of a stack of dense layers ending in softmax +
 * categorical cross-entropy, in one call: forward, loss, backward, optimizer
 * (and the forward pass of any dense stack, for inference).
 *
 * It runs exactly the kernels a step through the layers runs, in the same
 * order, on the same arrays (dense.h, loss.h, optim.h), so its results are
 * bit-identical to that step; what it saves is the Python between them (at
 * batch 128 of a 784-256-128-10 MLP, ~40 us of a ~1.05 ms step). */
#ifndef RETROPROP_DENSE_STACK_H
#define RETROPROP_DENSE_STACK_H

#include <stdint.h>
#include "retroprop/act.h"
#include "retroprop/optim.h"
#include "retroprop/rows.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One layer y = act(x @ w + b), x (batch, n_in), w (n_in, n_out). In a
 * training step the last layer's act is ignored: it is the softmax, fused
 * with the loss. Element type is that of the call. */
typedef struct {
    int n_in, n_out;
    const void *w;      /* (n_in, n_out) */
    const void *b;      /* (n_out,), or NULL */
    void *dw;           /* (n_in, n_out) dL/dw, overwritten (training only) */
    void *db;           /* (n_out,) dL/db, overwritten; NULL when b is (training only) */
    rp_act act;         /* a fused activation (rp_act_in_microkernel or not) */
    double act_param;
    void *y;            /* (batch, n_out) output; the last layer's: probabilities */
    void *dz;           /* (batch, n_out) dL/dz (the last layer's: dL/dlogits; training only) */
    void *dx;           /* (batch, n_in) dL/dx for the layer below; NULL for the first
                         * (training only) */
} rp_dense_stack_layer;

typedef enum {
    RP_STACK_APPLIED = 0,        /* the optimizer step was written (or mode was CHECK) */
    RP_STACK_LOSS_NONFINITE = 1, /* the loss is NaN/Inf: no gradient, no step */
    RP_STACK_STEP_REFUSED = 2    /* the optimizer's check failed: *first_bad says where */
} rp_stack_status;

/* The forward pass alone (inference): y of every layer, from x (batch,
 * layers[0].n_in). With logits != NULL the last layer is a softmax and logits
 * (batch, n_out) receives its pre-activation; otherwise it applies its act. */
void rp_dense_stack_forward_f32(int batch, int n_layers, const rp_dense_stack_layer *layers,
                                const float *x, float *logits);
void rp_dense_stack_forward_f64(int batch, int n_layers, const rp_dense_stack_layer *layers,
                                const double *x, double *logits);

/* A training step; the last layer is the softmax. x (batch, layers[0].n_in);
 * labels (batch,) class ids in [0, n_out of the last layer) or targets
 * (batch, n_out) rows (the other NULL); logits (batch, n_out) receives the
 * last layer's pre-activation. tensors are the optimizer's, in the caller's
 * order (the dw/db above among them). *loss receives the batch-mean loss;
 * *first_bad the optimizer's answer.
 * next_batch (or NULL): rows to copy during the step, typically the next
 * batch of a shuffled epoch, whatever the status; its out must not overlap
 * x or any array of the step.
 * bounds (or NULL): with mode RP_OPT_CHECK_APPLY the optimizer step is
 * rp_optimizer_step_tracked_* with these bounds; with another mode they
 * are marked invalid (valid = 0). */
rp_stack_status rp_dense_stack_step_f32(int batch, int n_layers, const rp_dense_stack_layer *layers,
                                        const float *x, const int64_t *labels, const float *targets,
                                        float *logits, const rp_opt_config *opt,
                                        const rp_opt_tensor *tensors, int n_tensors,
                                        rp_opt_mode mode, const rp_rows_gather *next_batch,
                                        rp_opt_bounds *bounds, double *loss, long *first_bad);
rp_stack_status rp_dense_stack_step_f64(int batch, int n_layers, const rp_dense_stack_layer *layers,
                                        const double *x, const int64_t *labels,
                                        const double *targets, double *logits,
                                        const rp_opt_config *opt, const rp_opt_tensor *tensors,
                                        int n_tensors, rp_opt_mode mode,
                                        const rp_rows_gather *next_batch, rp_opt_bounds *bounds,
                                        double *loss, long *first_bad);

#ifdef __cplusplus
}
#endif
#endif
