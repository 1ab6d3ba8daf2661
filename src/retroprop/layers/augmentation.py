"""Image augmentation layers: random flip, translation, crop, rotation, contrast
and brightness of NHWC images.

They are active only in training (``forward(x, training=True)``); at
inference they are the identity, except RandomCrop, which takes the centre
crop, so predictions are deterministic.

Each layer owns a generator seeded by ``seed`` (None: a fresh seed), so the
same seed gives the same sequence of random draws. The draws of the last
forward are kept: every transform here is a linear map of the input (a
permutation or interpolation of pixels, with constant or zero fill; a
per-image scale and shift), possibly clipped to a value range, and backward
applies its transpose to dy with those same draws. That makes them usable anywhere in a
model, not only as the first layer; the fill value is a constant and does not
depend on the input, so it receives no gradient.

Per-sample input shape is (height, width, channels), as for Conv2D.
"""
import numbers

import numpy as np

from .base import Layer


def _check_seed(layer, seed):
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                             or seed < 0):
        raise ValueError(f"{layer}: seed must be None or an integer >= 0, got {seed!r}")
    return None if seed is None else int(seed)


class _ImageAugmentation(Layer):
    """Shared plumbing: NHWC input check, the layer's generator, backward bookkeeping."""

    def __init__(self, seed=None, name=None):
        super().__init__(name=name)
        self.seed = _check_seed(type(self).__name__, seed)
        self._rng = np.random.default_rng(self.seed)
        self._n = None   # batch size of the last forward; None before any forward

    def build(self, input_shape, dtype, rng, backend=None):
        if len(tuple(input_shape)) != 3:
            raise ValueError(f"{type(self).__name__}: expects images of per-sample shape "
                             f"(height, width, channels), got input shape {tuple(input_shape)}")
        return super().build(input_shape, dtype, rng, backend)

    def _check_backward(self, dy):
        if self._n is None:
            raise RuntimeError(f"{self._describe()}: backward called before forward")
        self.check_output_grad(dy, self._n)


# --------------------------------------------------------------------------
# RandomFlip
# --------------------------------------------------------------------------

class RandomFlip(_ImageAugmentation):
    """Flip each image left-right and/or upside down with probability 1/2.

    ``mode``: "horizontal" (mirror the width axis), "vertical" (mirror the
    height axis) or "horizontal_and_vertical" (two independent draws per
    image). Identity at inference.
    """

    MODES = ("horizontal", "vertical", "horizontal_and_vertical")

    def __init__(self, mode="horizontal_and_vertical", seed=None, name=None):
        if mode not in self.MODES:
            raise ValueError(f"RandomFlip: mode must be one of {', '.join(self.MODES)}, "
                             f"got {mode!r}")
        super().__init__(seed=seed, name=name)
        self.mode = mode
        self._flip_h = None   # per-sample booleans of the last training forward
        self._flip_v = None

    def forward(self, x, training=False):
        """A flipped copy in training (per-sample coin flips), x itself at inference."""
        self.check_input(x)
        self._n = x.shape[0]
        if not training:
            self._flip_h = self._flip_v = None
            return x
        n = x.shape[0]
        no_flip = np.zeros(n, dtype=bool)
        self._flip_h = self._rng.random(n) < 0.5 if self.mode != "vertical" else no_flip
        self._flip_v = self._rng.random(n) < 0.5 if self.mode != "horizontal" else no_flip
        return self._apply(x)

    def _apply(self, a):
        # A flip is its own inverse and its own transpose, and the two flips
        # commute, so forward and backward are the same operation.
        out = a.copy()
        out[self._flip_h] = out[self._flip_h, :, ::-1, :]
        out[self._flip_v] = out[self._flip_v, ::-1, :, :]
        return out

    def backward(self, dy, need_dx=True):
        """dy flipped like the input of the last forward (identity after inference)."""
        self._check_backward(dy)
        if not need_dx:
            return None
        return dy if self._flip_h is None else self._apply(dy)

    def get_config(self):
        return {"mode": self.mode, "seed": self.seed, "name": self.name}


# --------------------------------------------------------------------------
# RandomTranslation
# --------------------------------------------------------------------------

def _factor_range(layer, value, argname):
    """A factor f -> (-f, f); a pair (lower, upper) unchanged; both within [-1, 1]."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{layer}: {argname} must be a number or a (lower, upper) pair, "
                             f"got {value!r}")
        lower, upper = value
    else:
        lower, upper = value, value   # sign applied below, once it is known to be a number
    try:
        lower, upper = float(lower), float(upper)
    except (TypeError, ValueError):
        raise ValueError(f"{layer}: {argname} must be a number or a (lower, upper) pair "
                         f"of numbers, got {value!r}") from None
    if not isinstance(value, (tuple, list)):
        lower = -lower
    if not (-1.0 <= lower <= upper <= 1.0):
        raise ValueError(f"{layer}: {argname} must give -1 <= lower <= upper <= 1, "
                         f"got {value!r}")
    return lower, upper


def shift_images(images, shift_h, shift_w, fill_value):
    """Each image i moved down by shift_h[i] and right by shift_w[i] pixels (negative: up/left).

    Pixels moved in from outside the image are ``fill_value``. The transpose
    of this map (for backward) is the opposite shift with zero fill.
    """
    n, height, width, _ = images.shape
    out = np.full_like(images, fill_value)
    for i in range(n):
        dh, dw = int(shift_h[i]), int(shift_w[i])
        rows, cols = height - abs(dh), width - abs(dw)
        if rows <= 0 or cols <= 0:
            continue  # shifted entirely out of the frame
        out[i, max(dh, 0):max(dh, 0) + rows, max(dw, 0):max(dw, 0) + cols] = \
            images[i, max(-dh, 0):max(-dh, 0) + rows, max(-dw, 0):max(-dw, 0) + cols]
    return out


class RandomTranslation(_ImageAugmentation):
    """Shift each image by a random whole number of pixels; identity at inference.

    Factors are fractions of the image size, as in Keras: ``height_factor=0.2``
    shifts vertically by a fraction drawn uniformly in [-0.2, 0.2] of the
    height, ``height_factor=(-0.1, 0.3)`` in [-0.1, 0.3]; positive values move
    the content down (height) or right (width), negative values up or left.
    The fraction times the size is rounded to the nearest integer, so shifts
    are whole pixels and no interpolation happens. Factors must lie in
    [-1, 1]. Uncovered pixels take ``fill_value`` (Keras' fill_mode="constant";
    the other Keras fill modes are not offered).
    """

    def __init__(self, height_factor, width_factor, fill_value=0.0, seed=None, name=None):
        layer = type(self).__name__
        self.height_factor = _factor_range(layer, height_factor, "height_factor")
        self.width_factor = _factor_range(layer, width_factor, "width_factor")
        try:
            fill_value = float(fill_value)
        except (TypeError, ValueError):
            raise ValueError(f"{layer}: fill_value must be a number, got {fill_value!r}") \
                from None
        if not np.isfinite(fill_value):
            raise ValueError(f"{layer}: fill_value must be finite, got {fill_value!r}")
        super().__init__(seed=seed, name=name)
        self.fill_value = fill_value
        self._shift_h = None   # per-sample integer shifts of the last training forward
        self._shift_w = None

    def forward(self, x, training=False):
        """A shifted copy in training, x itself at inference."""
        self.check_input(x)
        self._n = x.shape[0]
        if not training:
            self._shift_h = self._shift_w = None
            return x
        n = x.shape[0]
        height, width, _ = self.input_shape
        self._shift_h = np.rint(self._rng.uniform(*self.height_factor, size=n) * height)
        self._shift_w = np.rint(self._rng.uniform(*self.width_factor, size=n) * width)
        return shift_images(x, self._shift_h, self._shift_w, self.fill_value)

    def backward(self, dy, need_dx=True):
        """dy shifted back (zero fill: the filled pixels do not depend on x)."""
        self._check_backward(dy)
        if not need_dx:
            return None
        if self._shift_h is None:
            return dy
        return shift_images(dy, -self._shift_h, -self._shift_w, 0.0)

    def get_config(self):
        return {"height_factor": list(self.height_factor),
                "width_factor": list(self.width_factor),
                "fill_value": self.fill_value, "seed": self.seed, "name": self.name}


# --------------------------------------------------------------------------
# RandomCrop
# --------------------------------------------------------------------------

def _positive_int(layer, value, argname, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{layer}: {argname} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class RandomCrop(_ImageAugmentation):
    """Zero-pad each image by ``padding``, then cut out a (height, width) window.

    Training: the window's position is drawn uniformly per image (the CIFAR
    recipe is ``RandomCrop(32, 32, padding=4)`` on 32x32 images: random
    shifts of up to 4 pixels). Inference: the centre window, so the output
    shape is (height, width, channels) in both modes, as in Keras.
    ``padding`` is an int or a (pad_height, pad_width) pair of pixels added
    on each side (default 0). The padded image must be at least
    (height, width); unlike Keras, smaller inputs are an error, not resized,
    and inference takes a plain centre crop (no resize).
    """

    def __init__(self, height, width, padding=0, seed=None, name=None):
        layer = type(self).__name__
        self.height = _positive_int(layer, height, "height")
        self.width = _positive_int(layer, width, "width")
        pads = padding if isinstance(padding, (tuple, list)) else (padding, padding)
        if len(pads) != 2:
            raise ValueError(f"{layer}: padding must be an int or a (pad_height, pad_width) "
                             f"pair, got {padding!r}")
        self.padding = tuple(_positive_int(layer, p, "padding", minimum=0) for p in pads)
        super().__init__(seed=seed, name=name)
        self._top = None    # per-sample window corner in the padded image (last forward)
        self._left = None

    def compute_output_shape(self, input_shape):
        height, width, channels = input_shape
        padded = (height + 2 * self.padding[0], width + 2 * self.padding[1])
        if padded[0] < self.height or padded[1] < self.width:
            raise ValueError(f"{type(self).__name__}: crop size ({self.height}, {self.width}) "
                             f"is larger than the padded input {padded} (input "
                             f"({height}, {width}), padding {self.padding})")
        return (self.height, self.width, channels)

    def forward(self, x, training=False):
        """Random windows in training, the centre window at inference."""
        self.check_input(x)
        n, height, width, _ = x.shape
        self._n = n
        spare_h = height + 2 * self.padding[0] - self.height   # possible window offsets - 1
        spare_w = width + 2 * self.padding[1] - self.width
        if training:
            self._top = self._rng.integers(0, spare_h + 1, size=n)
            self._left = self._rng.integers(0, spare_w + 1, size=n)
        else:
            self._top = np.full(n, spare_h // 2)
            self._left = np.full(n, spare_w // 2)
        padded = self._pad(x)
        out = np.empty((n,) + self.output_shape, dtype=self.dtype)
        for i in range(n):
            top, left = self._top[i], self._left[i]
            out[i] = padded[i, top:top + self.height, left:left + self.width]
        return out

    def _pad(self, x):
        ph, pw = self.padding
        if ph == 0 and pw == 0:
            return x
        return np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))

    def backward(self, dy, need_dx=True):
        """dy placed back at each window's position, padding then stripped."""
        self._check_backward(dy)
        if not need_dx:
            return None
        n = dy.shape[0]
        height, width, channels = self.input_shape
        ph, pw = self.padding
        d_padded = np.zeros((n, height + 2 * ph, width + 2 * pw, channels), dtype=self.dtype)
        for i in range(n):
            top, left = self._top[i], self._left[i]
            d_padded[i, top:top + self.height, left:left + self.width] = dy[i]
        return np.ascontiguousarray(d_padded[:, ph:ph + height, pw:pw + width])

    def get_config(self):
        return {"height": self.height, "width": self.width, "padding": list(self.padding),
                "seed": self.seed, "name": self.name}


# --------------------------------------------------------------------------
# RandomRotation
# --------------------------------------------------------------------------

def _fill_number(layer, value, argname="fill_value"):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{layer}: {argname} must be a number, got {value!r}") from None
    if not np.isfinite(value):
        raise ValueError(f"{layer}: {argname} must be finite, got {value!r}")
    return value


def _value_range(layer, value_range):
    """None, or a (low, high) pair of finite numbers with low < high."""
    if value_range is None:
        return None
    try:
        low, high = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(f"{layer}: value_range must be None or a (low, high) pair, "
                         f"got {value_range!r}") from None
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError(f"{layer}: value_range must have finite low < high, got {value_range!r}")
    return (low, high)


def rotation_sampling(height, width, angles, order):
    """Where each output pixel of each image reads the input, for rotations by ``angles``
    (radians, counter-clockwise on screen) about the image centre.

    Returns (indices, weights, inside): arrays of shape (k, n, height * width)
    with k = 4 neighbours (bilinear, ``order=1``) or 1 (nearest, ``order=0``):
    flat input pixel indices, interpolation weights, and whether that
    neighbour lies in the image (outside ones read the fill value)."""
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    rows, cols = np.meshgrid(np.arange(height, dtype=np.float64),
                             np.arange(width, dtype=np.float64), indexing="ij")
    dy, dx = rows.ravel() - cy, cols.ravel() - cx
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
    # Inverse rotation of each output position; rows grow downwards, so a
    # counter-clockwise turn on screen reads from (y + sin dx, x - sin dy).
    src_y = cy + cos * dy + sin * dx
    src_x = cx - sin * dy + cos * dx
    if order == 0:
        ys, xs = np.rint(src_y), np.rint(src_x)
        neighbours = [(ys, xs, np.ones_like(ys))]
    else:
        y0, x0 = np.floor(src_y), np.floor(src_x)
        fy, fx = src_y - y0, src_x - x0
        neighbours = [(y0, x0, (1 - fy) * (1 - fx)), (y0, x0 + 1, (1 - fy) * fx),
                      (y0 + 1, x0, fy * (1 - fx)), (y0 + 1, x0 + 1, fy * fx)]
    indices, weights, inside = [], [], []
    for ys, xs, w in neighbours:
        ok = (ys >= 0) & (ys <= height - 1) & (xs >= 0) & (xs <= width - 1)
        idx = np.where(ok, ys * width + xs, 0).astype(np.int64)
        indices.append(idx)
        weights.append(w)
        inside.append(ok)
    return np.stack(indices), np.stack(weights), np.stack(inside)


class RandomRotation(_ImageAugmentation):
    """Rotate each image by a random angle about its centre; identity at inference.

    ``factor`` is a fraction of a full turn, as in Keras: 0.1 draws angles
    uniformly in [-0.1, 0.1] * 2 pi (+-36 degrees), a pair (lower, upper) in
    [lower, upper] * 2 pi; positive angles turn the content counter-clockwise.
    ``interpolation`` "bilinear" (default) or "nearest". Pixels whose source
    falls outside the image read ``fill_value`` (Keras' fill_mode="constant").
    Output pixel values are a fixed linear combination of input pixels (plus
    the fill), so backward scatters dy back with the same weights.
    """

    def __init__(self, factor, fill_value=0.0, interpolation="bilinear", seed=None, name=None):
        layer = type(self).__name__
        self.factor = _factor_range(layer, factor, "factor")
        self.fill_value = _fill_number(layer, fill_value)
        if interpolation not in ("bilinear", "nearest"):
            raise ValueError(f"{layer}: interpolation must be 'bilinear' or 'nearest', "
                             f"got {interpolation!r}")
        self.interpolation = interpolation
        super().__init__(seed=seed, name=name)
        self.angles = None      # per-sample angles (radians) of the last training forward
        self._sampling = None

    def forward(self, x, training=False):
        """A rotated copy in training, x itself at inference."""
        self.check_input(x)
        self._n = n = x.shape[0]
        if not training:
            self.angles = self._sampling = None
            return x
        height, width, channels = self.input_shape
        self.angles = self._rng.uniform(*self.factor, size=n) * 2.0 * np.pi
        order = 1 if self.interpolation == "bilinear" else 0
        self._sampling = rotation_sampling(height, width, self.angles, order)
        indices, weights, inside = self._sampling
        flat = x.reshape(n, height * width, channels)
        rows = np.arange(n)[:, None]
        out = np.zeros((n, height * width, channels), dtype=np.float64)
        for idx, w, ok in zip(indices, weights, inside):
            values = np.where(ok[:, :, None], flat[rows, idx], self.fill_value)
            out += w[:, :, None] * values
        return out.astype(self.dtype).reshape(x.shape)

    def backward(self, dy, need_dx=True):
        """dy scattered back to the pixels each output read (the fill gets nothing)."""
        self._check_backward(dy)
        if not need_dx:
            return None
        if self._sampling is None:
            return dy
        n = self._n
        height, width, channels = self.input_shape
        pixels = height * width
        indices, weights, inside = self._sampling
        g = dy.reshape(n, pixels, channels).astype(np.float64)
        offsets = (np.arange(n) * pixels)[:, None]
        dx = np.zeros((n * pixels, channels))
        for idx, w, ok in zip(indices, weights, inside):
            target = (idx + offsets)[ok]
            contrib = (w[:, :, None] * g)[ok]
            for c in range(channels):
                dx[:, c] += np.bincount(target, weights=contrib[:, c], minlength=n * pixels)
        return dx.astype(self.dtype).reshape(dy.shape[0], height, width, channels)

    def get_config(self):
        return {"factor": list(self.factor), "fill_value": self.fill_value,
                "interpolation": self.interpolation, "seed": self.seed, "name": self.name}


# --------------------------------------------------------------------------
# RandomContrast and RandomBrightness
# --------------------------------------------------------------------------

class _ClippedAugmentation(_ImageAugmentation):
    """Shared by the photometric layers: an optional clip to ``value_range``,
    whose gradient is zero where the output was clipped."""

    def __init__(self, value_range, seed, name):
        super().__init__(seed=seed, name=name)
        self.value_range = _value_range(type(self).__name__, value_range)
        self._unclipped = None   # mask of outputs inside value_range (None: no clipping)

    def _clip(self, y):
        if self.value_range is None:
            self._unclipped = None
            return y
        low, high = self.value_range
        self._unclipped = (y >= low) & (y <= high)
        return np.clip(y, low, high)

    def _through_clip(self, dy):
        return dy if self._unclipped is None else dy * self._unclipped


class RandomContrast(_ClippedAugmentation):
    """Scale each image's contrast by a random factor; identity at inference.

    Per image and channel, ``y = (x - m) * f + m`` with m the channel's mean
    over the image and f drawn uniformly in [1 - lower, 1 + upper], where
    ``factor`` is a number f0 (lower = upper = f0) or a pair (lower, upper),
    each >= 0 and lower <= 1 (Keras' rule). The result is clipped to
    ``value_range`` (default (0, 1), for images scaled to [0, 1]; None: no
    clipping). Backward: f dy + (1 - f) mean(dy), zero where clipped.
    """

    def __init__(self, factor, value_range=(0.0, 1.0), seed=None, name=None):
        layer = type(self).__name__
        pair = factor if isinstance(factor, (tuple, list)) else (factor, factor)
        try:
            lower, upper = (float(v) for v in pair)
        except (TypeError, ValueError):
            raise ValueError(f"{layer}: factor must be a number or a (lower, upper) pair, "
                             f"got {factor!r}") from None
        if not (0.0 <= lower <= 1.0 and 0.0 <= upper and np.isfinite(upper)):
            raise ValueError(f"{layer}: factor must give 0 <= lower <= 1 and a finite "
                             f"upper >= 0, got {factor!r}")
        self.factor = (lower, upper)
        super().__init__(value_range, seed, name)
        self.factors = None    # per-sample contrast factors of the last training forward

    def forward(self, x, training=False):
        self.check_input(x)
        self._n = n = x.shape[0]
        if not training:
            self.factors = self._unclipped = None
            return x
        lower, upper = self.factor
        self.factors = self._rng.uniform(1.0 - lower, 1.0 + upper, size=n).astype(self.dtype)
        f = self.factors[:, None, None, None]
        mean = x.mean(axis=(1, 2), keepdims=True)
        return self._clip((x - mean) * f + mean)

    def backward(self, dy, need_dx=True):
        self._check_backward(dy)
        if not need_dx:
            return None
        if self.factors is None:
            return dy
        g = self._through_clip(dy)
        f = self.factors[:, None, None, None]
        return f * g + (1 - f) * g.mean(axis=(1, 2), keepdims=True)

    def get_config(self):
        return {"factor": list(self.factor),
                "value_range": None if self.value_range is None else list(self.value_range),
                "seed": self.seed, "name": self.name}


class RandomBrightness(_ClippedAugmentation):
    """Add a random brightness offset to each image; identity at inference.

    The offset is drawn uniformly in [lower, upper] * (high - low) of
    ``value_range`` (the same for every pixel and channel of an image), where
    ``factor`` is a number f (in [-f, f]) or a pair (lower, upper) within
    [-1, 1], as in Keras; the result is clipped to ``value_range`` (default
    (0, 1); None: no clipping and offsets in [lower, upper]). Backward: dy,
    zero where clipped.
    """

    def __init__(self, factor, value_range=(0.0, 1.0), seed=None, name=None):
        self.factor = _factor_range(type(self).__name__, factor, "factor")
        super().__init__(value_range, seed, name)
        self.offsets = None    # per-sample offsets of the last training forward

    def forward(self, x, training=False):
        self.check_input(x)
        self._n = n = x.shape[0]
        if not training:
            self.offsets = self._unclipped = None
            return x
        span = 1.0 if self.value_range is None else self.value_range[1] - self.value_range[0]
        self.offsets = (self._rng.uniform(*self.factor, size=n) * span).astype(self.dtype)
        return self._clip(x + self.offsets[:, None, None, None])

    def backward(self, dy, need_dx=True):
        self._check_backward(dy)
        if not need_dx:
            return None
        if self.offsets is None:
            return dy
        return self._through_clip(dy)

    def get_config(self):
        return {"factor": list(self.factor),
                "value_range": None if self.value_range is None else list(self.value_range),
                "seed": self.seed, "name": self.name}
