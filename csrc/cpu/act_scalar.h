/* Scalar activation formulas shared by the portable kernels and by every
 * edge (partial tile) write-back, so there is one definition of each. */
#ifndef RETROPROP_ACT_SCALAR_H
#define RETROPROP_ACT_SCALAR_H

#include <math.h>
#include "retroprop/act.h"

static inline float rp_act_scalar_f32(rp_act act, float z)
{
    switch (act) {
    case RP_ACT_RELU: return z > 0.0f ? z : 0.0f;
    /* exp of a negative argument only: no overflow, no inf/inf. */
    case RP_ACT_SIGMOID:
        if (z >= 0.0f) return 1.0f / (1.0f + expf(-z));
        else { float e = expf(z); return e / (1.0f + e); }
    case RP_ACT_TANH: return tanhf(z);
    default: return z;
    }
}

static inline double rp_act_scalar_f64(rp_act act, double z)
{
    switch (act) {
    case RP_ACT_RELU: return z > 0.0 ? z : 0.0;
    case RP_ACT_SIGMOID:
        if (z >= 0.0) return 1.0 / (1.0 + exp(-z));
        else { double e = exp(z); return e / (1.0 + e); }
    case RP_ACT_TANH: return tanh(z);
    default: return z;
    }
}

/* act'(z) written in terms of y = act(z). */
static inline float rp_act_grad_from_output_f32(rp_act act, float y)
{
    switch (act) {
    case RP_ACT_RELU: return y > 0.0f ? 1.0f : 0.0f;
    case RP_ACT_SIGMOID: return y * (1.0f - y);
    case RP_ACT_TANH: return 1.0f - y * y;
    default: return 1.0f;
    }
}

static inline double rp_act_grad_from_output_f64(rp_act act, double y)
{
    switch (act) {
    case RP_ACT_RELU: return y > 0.0 ? 1.0 : 0.0;
    case RP_ACT_SIGMOID: return y * (1.0 - y);
    case RP_ACT_TANH: return 1.0 - y * y;
    default: return 1.0;
    }
}

#endif
