/* A dense stack's training step in one call (retroprop/dense_stack.h): the
 * same kernel calls, in the same order, as Dense.forward, the fused softmax
 * cross-entropy, Dense.backward_from_logits / backward and the optimizer's
 * check-then-apply step; and the forward alone. */
#include <math.h>
#include "retroprop/dense.h"
#include "retroprop/dense_stack.h"
#include "retroprop/loss.h"

#define DEFINE_STACK(SUFFIX, REAL)                                                            \
    void rp_dense_stack_forward_##SUFFIX(int batch, int n_layers,                             \
                                         const rp_dense_stack_layer *layers, const REAL *x,  \
                                         REAL *logits)                                        \
    {                                                                                         \
        const int last = n_layers - 1;                                                        \
        const REAL *in = x;                                                                   \
        for (int l = 0; l < n_layers; ++l) {                                                  \
            const rp_dense_stack_layer *L = &layers[l];                                       \
            if (l == last && logits) {                                                        \
                rp_dense_forward_softmax_##SUFFIX(batch, L->n_in, L->n_out, in,               \
                                                  (const REAL *)L->w, (const REAL *)L->b,     \
                                                  logits, (REAL *)L->y);                      \
            } else {                                                                          \
                rp_dense_forward_##SUFFIX(batch, L->n_in, L->n_out, in, (const REAL *)L->w,   \
                                          (const REAL *)L->b, L->act, L->act_param,           \
                                          (REAL *)L->y);                                      \
            }                                                                                 \
            in = (const REAL *)L->y;                                                          \
        }                                                                                     \
    }                                                                                         \
                                                                                              \
    rp_stack_status rp_dense_stack_step_##SUFFIX(                                             \
        int batch, int n_layers, const rp_dense_stack_layer *layers, const REAL *x,           \
        const int64_t *labels, const REAL *targets, REAL *logits, const rp_opt_config *opt,   \
        const rp_opt_tensor *tensors, int n_tensors, rp_opt_mode mode, double *loss,          \
        long *first_bad)                                                                      \
    {                                                                                         \
        const int last = n_layers - 1;                                                        \
        const rp_dense_stack_layer *top = &layers[last];                                      \
        *first_bad = -1;                                                                      \
        rp_dense_stack_forward_##SUFFIX(batch, n_layers, layers, x, logits);                  \
        /* loss and dL/dlogits (the Trainer checks the loss before backward) */               \
        *loss = rp_softmax_xent_##SUFFIX(batch, top->n_out, logits, labels, targets,          \
                                         (REAL *)top->dz);                                    \
        if (!isfinite(*loss)) return RP_STACK_LOSS_NONFINITE;                                 \
        /* backward: the top layer is linear in its logits; dz may be dy itself */            \
        for (int l = last; l >= 0; --l) {                                                     \
            const rp_dense_stack_layer *L = &layers[l];                                       \
            const REAL *layer_in = l == 0 ? x : (const REAL *)layers[l - 1].y;                \
            const REAL *dy = l == last ? (const REAL *)L->dz : (const REAL *)layers[l + 1].dx; \
            const REAL *y = l == last ? logits : (const REAL *)L->y;                          \
            rp_dense_backward_##SUFFIX(batch, L->n_in, L->n_out, layer_in, (const REAL *)L->w, \
                                       y, dy, l == last ? RP_ACT_LINEAR : L->act,             \
                                       l == last ? 0.0 : L->act_param, (REAL *)L->dz,         \
                                       (REAL *)L->dw, (REAL *)L->db,                          \
                                       l == 0 ? NULL : (REAL *)L->dx);                        \
        }                                                                                     \
        *first_bad = rp_optimizer_step_##SUFFIX(opt, tensors, n_tensors, mode, NULL);         \
        return *first_bad >= 0 ? RP_STACK_STEP_REFUSED : RP_STACK_APPLIED;                    \
    }

DEFINE_STACK(f32, float)
DEFINE_STACK(f64, double)
