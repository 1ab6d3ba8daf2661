"""Magnitude pruning: zero the smallest weights and keep them zero while training.

Pruning is one of the regularizers the course lists: a network usually
keeps its accuracy with most of its smallest weights removed. Here a weight
is pruned by zeroing it; a boolean *mask* per kernel remembers which weights
are kept, and re-applying the mask after every optimizer step keeps pruned
weights at zero (the optimizer would otherwise move them again).

* :func:`magnitude_masks` masks the ``sparsity`` fraction of smallest |w|,
  per tensor (``scope="layer"``) or over all pruned tensors together
  (``"global"``); a tensor's already-pruned weights stay pruned.
* :func:`apply_masks` zeroes the pruned weights; :func:`sparsity` reports
  the fraction of zeros per tensor and overall; :func:`summary` as text.
* :class:`Pruning` is the callback for training: it raises the sparsity
  from ``initial_sparsity`` to ``target_sparsity`` at the start of the epochs
  from ``begin_epoch`` to ``end_epoch`` along Zhu & Gupta's (2017) cubic
  schedule, s_t = s_f + (s_i - s_f) (1 - p)^3 with p the progress in [0, 1],
  and re-applies the masks after every batch. ``history`` records the
  overall sparsity reached at each epoch.

Only kernels ("W", and SimpleRNN's "U") are pruned by default; biases and
normalisation parameters are few and matter more.
"""
import numbers

import numpy as np

from .callbacks import Callback

DEFAULT_PARAMS = ("W", "U")


def _check_fraction(value, name):
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number in [0, 1), got {value!r}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number in [0, 1), got {value!r}") from None
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return value


def prunable(model, params=DEFAULT_PARAMS):
    """``{"layer/param": array}`` of the model's trainable parameters named in ``params``."""
    out = {}
    for layer, name, param, _ in model.parameters():
        if name in params and layer.is_param_trainable(name):
            out[f"{layer.name}/{name}"] = param
    return out


def magnitude_masks(model, sparsity, scope="layer", params=DEFAULT_PARAMS, masks=None):
    """Boolean masks (True = kept) pruning a ``sparsity`` fraction of the smallest |w|.

    ``scope="layer"`` prunes that fraction of every tensor; ``"global"`` one
    magnitude threshold over all of them (small layers may lose more). With
    ``masks`` (from an earlier call) weights pruned before stay pruned and
    count towards the fraction. Ties at the threshold are broken by position,
    so exactly round(sparsity * size) weights are pruned.
    """
    sparsity = _check_fraction(sparsity, "sparsity")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    tensors = prunable(model, params)
    if not tensors:
        raise ValueError(f"model has no trainable parameters named {params!r} to prune")
    masks = dict(masks or {})

    def scores(key, w):
        # |w|, with weights pruned earlier ranked first (they stay pruned).
        s = np.abs(w).astype(np.float64).ravel()
        if key in masks:
            s[~masks[key].ravel()] = -1.0
        return s

    new = {}
    if scope == "layer":
        for key, w in tensors.items():
            s = scores(key, w)
            k = int(round(sparsity * s.size))
            keep = np.ones(s.size, dtype=bool)
            keep[np.argsort(s, kind="stable")[:k]] = False
            new[key] = keep.reshape(w.shape)
    else:
        keys = list(tensors)
        s = np.concatenate([scores(key, tensors[key]) for key in keys])
        k = int(round(sparsity * s.size))
        keep = np.ones(s.size, dtype=bool)
        keep[np.argsort(s, kind="stable")[:k]] = False
        start = 0
        for key in keys:
            size = tensors[key].size
            new[key] = keep[start:start + size].reshape(tensors[key].shape)
            start += size
    return new


def apply_masks(model, masks):
    """Zero every pruned weight (in place)."""
    tensors = prunable(model, tuple({key.rsplit("/", 1)[1] for key in masks}))
    for key, mask in masks.items():
        if key not in tensors:
            raise ValueError(f"no parameter {key!r} in the model to apply a mask to")
        w = tensors[key]
        if mask.shape != w.shape:
            raise ValueError(f"mask for {key!r} has shape {mask.shape}, the parameter {w.shape}")
        np.multiply(w, mask, out=w)


def sparsity(model, params=DEFAULT_PARAMS):
    """``{"layer/param": fraction of exact zeros, ..., "total": over all of them}``."""
    tensors = prunable(model, params)
    report = {key: float(np.count_nonzero(w == 0) / w.size) for key, w in tensors.items()}
    zeros = sum(np.count_nonzero(w == 0) for w in tensors.values())
    size = sum(w.size for w in tensors.values())
    report["total"] = float(zeros / size) if size else 0.0
    return report


def summary(model, params=DEFAULT_PARAMS):
    """A text table of :func:`sparsity`: weights, zeros and sparsity per tensor."""
    tensors = prunable(model, params)
    lines = [f"{'parameter':<28}{'weights':>10}{'zeros':>10}{'sparsity':>10}"]
    total = zeros = 0
    for key, w in tensors.items():
        z = int(np.count_nonzero(w == 0))
        lines.append(f"{key:<28}{w.size:>10,}{z:>10,}{z / w.size:>10.1%}")
        total += w.size
        zeros += z
    lines.append(f"{'total':<28}{total:>10,}{zeros:>10,}{(zeros / total if total else 0):>10.1%}")
    return "\n".join(lines)


def polynomial_sparsity(epoch, initial, target, begin, end, power=3):
    """Zhu & Gupta's schedule: the sparsity to reach at the start of ``epoch``."""
    if epoch < begin:
        return 0.0
    if end <= begin or epoch >= end:
        return target
    progress = (epoch - begin) / (end - begin)
    return target + (initial - target) * (1.0 - progress) ** power


class Pruning(Callback):
    """Gradual magnitude pruning during training (see the module notes).

    Parameters
    ----------
    target_sparsity : float in [0, 1)
    initial_sparsity : float in [0, target] (default 0)
    begin_epoch, end_epoch : ints (0-based); the target is reached at the
        start of ``end_epoch`` (default: begin_epoch, i.e. prune at once)
    scope : "layer" or "global"
    params : parameter names to prune (default kernels "W" and "U")
    """

    def __init__(self, target_sparsity, initial_sparsity=0.0, begin_epoch=0, end_epoch=None,
                 scope="layer", params=DEFAULT_PARAMS):
        super().__init__()
        self.target_sparsity = _check_fraction(target_sparsity, "target_sparsity")
        self.initial_sparsity = _check_fraction(initial_sparsity, "initial_sparsity")
        if self.initial_sparsity > self.target_sparsity:
            raise ValueError(f"initial_sparsity ({initial_sparsity}) must not exceed "
                             f"target_sparsity ({target_sparsity})")
        for name, value in (("begin_epoch", begin_epoch), ("end_epoch", end_epoch)):
            if value is not None and (isinstance(value, bool) or
                                      not isinstance(value, numbers.Integral) or value < 0):
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        self.begin_epoch = int(begin_epoch)
        self.end_epoch = self.begin_epoch if end_epoch is None else int(end_epoch)
        if self.end_epoch < self.begin_epoch:
            raise ValueError(f"end_epoch ({end_epoch}) must not be before begin_epoch "
                             f"({begin_epoch})")
        if scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
        self.scope = scope
        self.params = tuple(params)
        self.masks = None
        self.history = []    # overall sparsity of the pruned tensors after each epoch

    def on_train_begin(self, logs=None):
        self.history = []

    def on_epoch_begin(self, epoch, logs=None):
        if epoch < self.begin_epoch:
            return
        level = polynomial_sparsity(epoch, self.initial_sparsity, self.target_sparsity,
                                    self.begin_epoch, self.end_epoch)
        self.masks = magnitude_masks(self.model, level, self.scope, self.params, self.masks)
        apply_masks(self.model, self.masks)

    def on_batch_end(self, batch, logs=None):
        if self.masks is not None:
            apply_masks(self.model, self.masks)

    def on_epoch_end(self, epoch, logs=None):
        self.history.append(sparsity(self.model, self.params)["total"])
        if logs is not None:
            logs["sparsity"] = self.history[-1]
