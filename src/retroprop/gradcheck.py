"""Gradient checking: backprop against central finite differences.

For every checked scalar θ (a parameter entry or an input entry)::

    numeric  = (L(θ + eps) - L(θ - eps)) / (2 eps)
    rel_err  = |analytic - numeric| / max(|analytic| + |numeric|, denom_floor)

where L is the data loss plus the regularisation penalties, computed exactly
as the Trainer does (including the fused softmax + cross-entropy path).

Why eps = 1e-5: the finite difference has a truncation error of about
eps**2 * |L'''| / 6 and a rounding error of about machine_eps * |L| / eps.
In float64 the sum is smallest near eps = cbrt(machine_eps) ~ 6e-6; with
eps = 1e-6 the rounding noise alone is ~1e-10, ten times more than at 1e-5.

Why the floors: even then a component whose true gradient is 1e-7 would
show a large "relative error" made only of that noise. So below a combined
magnitude of ``denom_floor`` (1e-4) the error is measured against the floor
instead, which still flags any absolute discrepancy above 1e-10 at the 1e-6
level. Entries where both gradients are below ``abs_floor`` (1e-8) count as 0.

The check runs in float64; float32 rounding (1e-7 relative) would swamp the
differences. A float32 model is rejected with a ValueError asking for a
model built with ``dtype="float64"`` (same architecture and seed give the
same starting weights, see initializers).

Layers are run with ``training=False`` by default so that stochastic layers
are deterministic during the check. ``training=True`` checks the training-mode
gradients of deterministic layers whose training forward differs
(BatchNormalization's batch statistics); non-trainable state the forward
passes update (moving statistics) is restored afterwards.
"""
import numpy as np

from .backend import get_backend
from .trainer import Objective, backpropagate, forward_loss


def relative_error(analytic, numeric, abs_floor=1e-8, denom_floor=1e-4):
    """Max over entries of |a - n| / max(|a| + |n|, denom_floor).

    Entries where both |a| and |n| are below ``abs_floor`` count as 0.
    """
    analytic = np.asarray(analytic, dtype=np.float64)
    numeric = np.asarray(numeric, dtype=np.float64)
    err = np.abs(analytic - numeric) / np.maximum(np.abs(analytic) + np.abs(numeric), denom_floor)
    flat = (np.abs(analytic) < abs_floor) & (np.abs(numeric) < abs_floor)
    err[flat] = 0.0
    return float(err.max()) if err.size else 0.0


def _indices(size, max_count, rng):
    """All flat indices, or a seeded sample of ``max_count`` of them."""
    if max_count is None or max_count >= size:
        return np.arange(size)
    return np.sort(rng.choice(size, size=max_count, replace=False))


def _numeric_gradient(array, indices, objective, eps):
    """Central differences of ``objective()`` w.r.t. array.flat[indices].

    The array is modified in place and each entry restored exactly afterwards.
    """
    flat = array.reshape(-1)  # a view: array is C-contiguous
    out = np.empty(len(indices))
    for j, i in enumerate(indices):
        original = flat[i]
        flat[i] = original + eps
        plus = objective()
        flat[i] = original - eps
        minus = objective()
        flat[i] = original  # exact restore, not original + eps - eps
        out[j] = (plus - minus) / (2.0 * eps)
    return out


def _restoring_state(arrays):
    """Copies of the state arrays and a function that puts them back."""
    saved = [(arr, arr.copy()) for arr in arrays]

    def restore():
        for arr, copy in saved:
            np.copyto(arr, copy)
    return restore


def gradcheck(model, x, y, loss="categorical_crossentropy", eps=1e-5,
              max_params_per_tensor=None, seed=0, abs_floor=1e-8, denom_floor=1e-4,
              return_details=False, training=False, loss_weights=None):
    """Maximum relative error between backprop and finite-difference gradients.

    Checks every parameter tensor of ``model`` (at most
    ``max_params_per_tensor`` randomly chosen entries of each, seeded by
    ``seed``) and every input. ``model`` must be float64; any graph works
    (``x``, ``y``, ``loss`` and ``loss_weights`` as for ``Trainer.fit``). With
    ``return_details=True`` returns ``(max_error, {"layer/param" or "input":
    error})`` (inputs are "input:<name>" when there are several).
    ``training=True`` runs the layers in training mode (see the module notes).
    """
    if not model.built:
        model.build(np.asarray(x).shape[1:])
    if model.dtype != np.float64:
        raise ValueError(f"gradcheck needs a float64 model, got {model.dtype}: build it with "
                         f"Sequential(..., dtype='float64')")
    objective = Objective(model, loss, loss_weights)
    rng = np.random.default_rng(seed)
    xs = [a.copy() for a in model.prepare_inputs(x)]  # our own copies: perturbed in place
    targets = objective.prepare_targets(y, xs[0].shape[0], "y")

    restore_state = _restoring_state([arr for _, _, arr in model.states()])

    def objective_value():
        value, _, _ = forward_loss(model, objective, xs, targets, training=training)
        return value + model.regularization_loss()

    # Analytic gradients (copied: the numeric passes reuse the plan's buffers).
    _, _, seeds = forward_loss(model, objective, xs, targets, training=training, with_grad=True)
    dxs = backpropagate(model, objective, seeds, input_grad=True)
    dxs = dxs if isinstance(dxs, list) else [dxs]
    analytic = {f"{layer.name}/{name}": grad.copy() for layer, name, _, grad in model.parameters()}
    analytic_dxs = [np.array(dx, dtype=np.float64, copy=True) for dx in dxs]

    errors = {}
    for layer, name, param, _ in model.parameters():
        key = f"{layer.name}/{name}"
        idx = _indices(param.size, max_params_per_tensor, rng)
        numeric = _numeric_gradient(param, idx, objective_value, eps)
        errors[key] = relative_error(analytic[key].reshape(-1)[idx], numeric,
                                     abs_floor, denom_floor)
    for x_arr, dx, name in zip(xs, analytic_dxs, model.input_names):
        idx = _indices(x_arr.size, max_params_per_tensor, rng)
        numeric = _numeric_gradient(x_arr, idx, objective_value, eps)
        key = "input" if len(xs) == 1 else f"input:{name}"
        errors[key] = relative_error(dx.reshape(-1)[idx], numeric, abs_floor, denom_floor)
    restore_state()

    worst = max(errors.values())
    return (worst, errors) if return_details else worst


def check_layer_gradients(layer, input_shape, batch_size=3, eps=1e-5, seed=0, x=None,
                          backend=None, abs_floor=1e-8, denom_floor=1e-4,
                          return_details=False, training=False):
    """Gradient check of one layer on its own, in float64.

    Builds ``layer`` for per-sample ``input_shape`` (float64, seeded) unless it
    is already built, and uses the loss L = sum(y * R) with a fixed random R,
    so dL/dy = R exercises every output. ``x`` defaults to standard normal
    data of shape (batch_size, *input_shape). Returns the maximum relative
    error over the layer's parameters and its input (see :func:`gradcheck`,
    also for ``training``).
    """
    rng = np.random.default_rng(seed)
    if not layer.built:
        layer.build(tuple(input_shape), np.float64, rng,
                    backend=backend if backend is not None else get_backend())
    if layer.dtype != np.float64:
        raise ValueError(f"check_layer_gradients needs a float64 layer, got {layer.dtype}")
    if x is None:
        x = rng.standard_normal((batch_size,) + tuple(input_shape))
    x = np.array(x, dtype=np.float64, copy=True)
    restore_state = _restoring_state(layer.state.values())
    y = layer.forward(x, training=training)
    weights = rng.standard_normal(y.shape)

    def objective():
        out = layer.forward(x, training=training)
        return float(np.sum(out * weights)) + layer.regularization_loss()

    dx = layer.backward(weights.copy(), need_dx=True)
    analytic_dx = np.array(dx, dtype=np.float64, copy=True)
    analytic = {name: grad.copy() for name, grad in layer.grads.items()}

    errors = {}
    for name, param in layer.params.items():
        idx = np.arange(param.size)
        numeric = _numeric_gradient(param, idx, objective, eps)
        errors[name] = relative_error(analytic[name].reshape(-1), numeric,
                                      abs_floor, denom_floor)
    numeric = _numeric_gradient(x, np.arange(x.size), objective, eps)
    errors["input"] = relative_error(analytic_dx.reshape(-1), numeric,
                                     abs_floor, denom_floor)
    restore_state()
    worst = max(errors.values())
    return (worst, errors) if return_details else worst
