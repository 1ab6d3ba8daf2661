"""Small models trained straight on a backend's operations (no Layer/Model):
the README MLP, LeNet-5 and a CIFAR-sized CNN with batch norm. The same code
runs on the CPU backend (NumPy arrays) and on a device backend
(DeviceArrays), so a device's weights after an epoch can be compared with
the CPU's (tests/test_cuda_training.py on the emulator, benchmarks/
cuda_check.py on a GPU). Parameters, gradients, optimizer state and buffers
are allocated once per model and batch size; a step moves only the batch
(and, for the loss, one scalar when it is read).
"""
import numpy as np


class Memory:
    """Allocation and transfers on either kind of backend."""

    def __init__(self, backend):
        self.backend = backend
        self.device = hasattr(backend, "to_device")

    def empty(self, shape, dtype):
        return self.backend.empty(shape, dtype) if self.device else np.empty(shape, dtype)

    def put(self, array):
        return self.backend.to_device(array) if self.device else np.ascontiguousarray(array)

    def get(self, array):
        return array.to_host() if self.device else np.array(array)

    def set(self, array, value):
        """Overwrite array (a parameter, in place) with the host array value."""
        if self.device:
            self.backend.to_device(value, out=array)
        else:
            np.copyto(array, value)

    def view(self, array, shape):
        return array.reshape(shape)


def _glorot(rng, shape, fan_in, fan_out, dtype):
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape).astype(dtype)


class Net:
    """A chain of dense / conv / pool / batch-norm stages with a softmax
    cross-entropy top, trained by SGD with momentum (one optimizer_step)."""

    def __init__(self, backend, spec, input_shape, batch, dtype=np.float32, seed=0):
        self.mem = Memory(backend)
        self.be = backend
        self.dtype = np.dtype(dtype)
        self.batch = batch
        rng = np.random.default_rng(seed)
        self.stages = []
        self.params, self.grads, self.velocity = [], [], []
        shape = (batch,) + tuple(input_shape)
        for kind, arg in spec:
            stage = {"kind": kind, "in_shape": shape}
            if kind == "dense":
                units, act = arg
                k = int(np.prod(shape[1:]))
                stage["w"] = self._param(_glorot(rng, (k, units), k, units, dtype))
                stage["b"] = self._param(np.zeros(units, dtype))
                stage["act"] = act
                shape = (batch, units)
            elif kind == "conv":
                filters, size, padding, act = arg
                c = shape[3]
                pad = (size // 2,) * 4 if padding == "same" else (0, 0, 0, 0)
                stage["w"] = self._param(_glorot(rng, (size, size, c, filters), size * size * c,
                                                 size * size * filters, dtype))
                stage["b"] = self._param(np.zeros(filters, dtype))
                stage["act"], stage["pad"] = act, pad
                oh = shape[1] + pad[0] + pad[1] - size + 1
                ow = shape[2] + pad[2] + pad[3] - size + 1
                shape = (batch, oh, ow, filters)
            elif kind == "maxpool":
                stage["argmax"] = self.mem.empty((batch, shape[1] // 2, shape[2] // 2, shape[3]),
                                                 np.int32)
                shape = (batch, shape[1] // 2, shape[2] // 2, shape[3])
            elif kind == "bn_relu":
                c = shape[-1]
                stage["gamma"] = self._param(np.ones(c, dtype))
                stage["beta"] = self._param(np.zeros(c, dtype))
                stage["mean"] = self.mem.empty((c,), dtype)
                stage["var"] = self.mem.empty((c,), dtype)
                stage["z"] = self.mem.empty(shape, dtype)
            stage["out_shape"] = shape
            stage["y"] = self.mem.empty(shape, dtype)
            stage["dx"] = self.mem.empty(stage["in_shape"], dtype)
            self.stages.append(stage)
        self.logits_grad = self.mem.empty(shape, dtype)

    def _param(self, value):
        p = self.mem.put(value)
        self.params.append(p)
        self.grads.append(self.mem.empty(value.shape, value.dtype))
        self.velocity.append(self.mem.put(np.zeros_like(value)))
        return len(self.params) - 1

    def weights(self):
        return [self.mem.get(p) for p in self.params]

    def forward(self, x):
        be = self.be
        for st in self.stages:
            kind = st["kind"]
            if kind == "dense":
                x2 = self.mem.view(x, (self.batch, -1))
                be.dense_forward(x2, self.params[st["w"]], self.params[st["b"]], st["act"],
                                 out=st["y"])
            elif kind == "conv":
                be.conv2d_forward(x, self.params[st["w"]], self.params[st["b"]], st["act"],
                                  padding=st["pad"], out=st["y"])
            elif kind == "maxpool":
                be.maxpool2d_forward(x, (2, 2), (2, 2), out=st["y"], argmax=st["argmax"])
            elif kind == "bn_relu":
                be.batchnorm_stats(x, st["mean"], st["var"])
                be.batchnorm_apply(x, st["mean"], st["var"], self.params[st["gamma"]],
                                   self.params[st["beta"]], epsilon=1e-3, out=st["z"])
                be.activation_forward("relu", st["z"], out=st["y"])
            st["x"] = x
            x = st["y"]
        return x

    def step(self, x, labels, lr=0.05, momentum=0.9):
        """Forward, softmax cross-entropy, backward, one SGD step. Returns
        the loss (a float on the CPU, a 0-d DeviceArray on a device)."""
        loss = self.loss_and_gradients(x, labels)
        self.be.optimizer_step("sgd", self.params, self.grads, self.velocity,
                               [None] * len(self.params), lr=lr, momentum=momentum, mode="apply")
        return loss

    def loss_and_gradients(self, x, labels, backward=True):
        """The loss of a batch and (backward=True) every parameter's gradient."""
        be = self.be
        logits = self.forward(x)
        if not backward:
            return be.softmax_cross_entropy(logits, labels, grad=self.logits_grad)[0]
        loss, dy = be.softmax_cross_entropy(logits, labels, grad=self.logits_grad)
        for i in range(len(self.stages) - 1, -1, -1):
            st = self.stages[i]
            kind = st["kind"]
            need_dx = i > 0
            dx = st["dx"] if need_dx else None
            if kind == "dense":
                x2 = self.mem.view(st["x"], (self.batch, -1))
                dx2 = self.mem.view(dx, (self.batch, -1)) if need_dx else None
                be.dense_backward(x2, self.params[st["w"]], st["y"], dy, st["act"],
                                  self.grads[st["w"]], self.grads[st["b"]], dx2)
            elif kind == "conv":
                be.conv2d_backward(st["x"], self.params[st["w"]], st["y"], dy, st["act"],
                                   self.grads[st["w"]], self.grads[st["b"]], dx,
                                   padding=st["pad"])
            elif kind == "maxpool":
                be.maxpool2d_backward(st["argmax"], dy, (2, 2), (2, 2), (0, 0, 0, 0), st["dx"])
            elif kind == "bn_relu":
                dz = be.activation_backward("relu", st["y"], dy, out=st["z"])
                be.batchnorm_backward(st["x"], dz, st["mean"], st["var"],
                                      self.params[st["gamma"]], epsilon=1e-3, training=True,
                                      dgamma=self.grads[st["gamma"]],
                                      dbeta=self.grads[st["beta"]], dx=st["dx"])
            dy = st["dx"]
        return loss


MLP = [("dense", (256, "relu")), ("dense", (128, "relu")), ("dense", (10, "linear"))]
LENET5 = [("conv", (6, 5, "same", "relu")), ("maxpool", None),
          ("conv", (16, 5, "valid", "relu")), ("maxpool", None),
          ("dense", (120, "relu")), ("dense", (84, "relu")), ("dense", (10, "linear"))]
CIFAR_BN = [("conv", (32, 3, "same", "linear")), ("bn_relu", None),
            ("conv", (32, 3, "same", "linear")), ("bn_relu", None), ("maxpool", None),
            ("conv", (64, 3, "same", "linear")), ("bn_relu", None),
            ("conv", (64, 3, "same", "linear")), ("bn_relu", None), ("maxpool", None),
            ("dense", (10, "linear"))]


def train_epoch(net, x, labels, lr=0.05):
    """One epoch over x in order (whole batches only); the mean loss as a float."""
    total, steps = 0.0, 0
    for start in range(0, len(x) - net.batch + 1, net.batch):
        xb = net.mem.put(x[start:start + net.batch])
        yb = net.mem.put(np.ascontiguousarray(labels[start:start + net.batch], np.int64))
        loss = net.step(xb, yb, lr=lr)
        total += float(loss)
        steps += 1
    return total / max(steps, 1)


def gradcheck(net, x, labels, per_param=3, h=1e-6, seed=0):
    """The largest relative error (floored at 1e-3 in the denominator) between
    the backward pass's gradients and central finite differences of the loss,
    at ``per_param`` random coordinates of every parameter (float64 nets)."""
    rng = np.random.default_rng(seed)
    x, labels = net.mem.put(x), net.mem.put(np.asarray(labels, np.int64))
    net.loss_and_gradients(x, labels)
    grads = [net.mem.get(g) for g in net.grads]
    worst = 0.0
    for p, g in zip(net.params, grads):
        value = net.mem.get(p)
        for flat in rng.choice(value.size, size=min(per_param, value.size), replace=False):
            idx = np.unravel_index(flat, value.shape)
            losses = []
            for sign in (1, -1):
                moved = value.copy()
                moved[idx] += sign * h
                net.mem.set(p, moved)
                losses.append(float(net.loss_and_gradients(x, labels, backward=False)))
            net.mem.set(p, value)
            numeric = (losses[0] - losses[1]) / (2 * h)
            # relative, with a floor: a gradient that is 0 analytically (a bias
            # followed by batch norm) is ~1e-10 of rounding noise numerically
            err = abs(numeric - g[idx]) / max(1e-3, abs(numeric) + abs(g[idx]))
            worst = max(worst, err)
    return worst
