"""retroprop against its peers, on the same workloads, in the same run.

    python benchmarks/run.py [--threads 2] [--repeats 3] [--quick] [--json out.json]
                             [--only micro,mlp,mlp1,mlp_dropout,mlp_l2,lenet,graph,contention]
                             [--stat median|min] [--warmup 0.5]

Every retroprop model is built as README.md documents it, the way a user
would write it: images of shape (N, 28, 28, 1), ``Flatten`` first,
``metrics=["accuracy"]`` (the MLP is ``retroprop train --model mlp``'s).

Workloads: raw GEMM (512^3, 1024^3), fused dense + ReLU forward and backward
at square and MLP shapes, single-sample inference of the README MLP,
Conv2D + ReLU forward and backward on three layer shapes (the first without
dx, as a first layer), one epoch of training (with peak RSS) of: the README
MLP 784-256-128-10 at batch 32 and 128 (and at batch 128 on one thread:
mlp1), the same MLP with Dropout(0.2) after each hidden layer and with an L2
penalty on every kernel (batch 128; PyTorch applies the L2 as weight decay
on the kernels), LeNet-5 at batch 64, and a graph model (two inputs, the
image's top and bottom halves, joined by Concatenate, a Dense layer, two
Dense branches merged with Add) beside the same layers written as a chain
(Dense 256-256-10 on the whole image), both at batch 128.
Opt-in, --only contention: a 4096-sample MLP epoch at 1 and at all cores'
threads while a CPU-bound process runs on every core (started and stopped
here), for retroprop and PyTorch.

Opt-in, the CNN workloads (issue 24), each against PyTorch in NCHW and in
channels_last (the faster layout is the one the goal counts):
    --only cifar      CIFAR-sized CNN, 32x32x3: Conv 32-32-pool-64-64-pool (3x3 "same",
                      each Conv + BN + ReLU), Dense 256, 10; batch 64 and 128
    --only resnet     4 residual blocks (Conv 3x3 16 + BN + ReLU + Conv 3x3 16 + BN,
                      identity shortcut, ReLU after the sum) on 32x32x16, GlobalAvgPool,
                      Dense 10; batch 64
    --only conv1d     Conv1D model on (N, 128, 8): Conv1D 32@5 + ReLU, pool 2, Conv1D
                      64@5 + ReLU, pool 2, Dense 128, 10; batch 64 (PyTorch: Conv1d on NCL,
                      and as height-1 Conv2d on (N, C, 1, L) in channels_last)
    --only wide_mlp   MLP 784-2048-2048-10, batch 256 (also in the MLP table's units)
    --only sgemm      float32 GEMM 1024^3 and 2048^3 against NumPy in its natural
                      configuration: a child process without OPENBLAS_CORETYPE, so
                      OpenBLAS picks its best kernel for this CPU (threadpoolctl names it)
    --only cnn-goals  all of the above and lenet: the issue's goal table
    --layers          with cifar: per-layer forward and backward times of both frameworks
Every retroprop model is built with the public API (rp.Sequential, rp.layers.*);
synthetic data (the speed does not depend on the values).
Peers: PyTorch on the CPU (when importable), NumPy (OpenBLAS matmul; a plain
NumPy backprop loop for the MLP) and scikit-learn's MLPClassifier (when
importable). Every framework gets the same thread count. Micro workloads run
in this process, interleaved; each training workload runs in a fresh child
process per framework and repetition (so peak RSS is the child's own), also
interleaved; each child trains for --warmup seconds (the same for every
framework) before the epoch it times. The table shows medians (or minima,
--stat min) and ratio = retroprop time / peer time (below 1 means retroprop
is faster).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def set_thread_env(threads):
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


# The statistic of repeated timings the table reports: "median" (default) or
# "min" (--stat min). On a shared machine whose speed drifts, slow phases only
# ever add time, so the minimum of interleaved repetitions compares each
# framework at its best; the median shows what a typical run sees.
STAT = {"fn": median, "name": "median"}


def summarise(values):
    return STAT["fn"](values)


def time_call(fn, min_seconds=0.05):
    """Seconds per call of fn: the median (or with --stat min the minimum) over
    batches of calls lasting >= min_seconds (9 shorter batches for the minimum,
    so that one of them is likely to fall in a quiet moment)."""
    if STAT["fn"] is min:
        min_seconds /= 2
    # Let the previous framework's worker threads (OpenMP, OpenBLAS) stop
    # spinning first: a spinning pool steals the cores from the next one.
    time.sleep(0.3)
    fn()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds:
        fn()
        reps += 1
    per_batch = max(1, reps)
    samples = []
    for _ in range(9 if STAT["fn"] is min else 5):
        t0 = time.perf_counter()
        for _ in range(per_batch):
            fn()
        samples.append((time.perf_counter() - t0) / per_batch)
    return summarise(samples)


# ----------------------------------------------------------------------------- data

def fashion_subset(n_train):
    import numpy as np
    import retroprop as rp
    try:
        (x, y), _ = rp.datasets.load_fashion_mnist(download=False)
        x, y = x[:n_train].copy(), y[:n_train].copy()
    except FileNotFoundError:
        rng = np.random.default_rng(0)  # same shapes, synthetic values
        x, y = rng.random((n_train, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, n_train)
    reset_peak_rss()
    return x, y


def reset_peak_rss():
    """Restart the kernel's peak-RSS count (Linux), so that the peak reported by
    a training child is that of training (framework, model, the data subset),
    not of decompressing the whole data set first."""
    import gc
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mib():
    """Peak resident set size of this process since the last reset_peak_rss()."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ----------------------------------------------------------------------------- training children

# Seconds of training each child does before its timed epoch (--warmup),
# the same for every framework. On the machine the README's numbers come
# from, a process's first ~0.3 s of two-thread training run slower than the
# rest (the same C step harness, no Python: ~1,050 us a batch-128 step at
# first, ~900 us after 150-300 steps; a process started right after another
# one's training starts fast), so an epoch timed after a few warm-up batches
# partly measures how long the machine had been idle before the child.
WARMUP = {"seconds": 0.5}


def warm_up(train_on_first, batch, n_rows):
    """train_on_first(n) trains one epoch on the first n rows: four batches
    (every path compiled, every buffer allocated), then 16-batch epochs until
    WARMUP seconds have passed."""
    train_on_first(min(batch * 4, n_rows))
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < WARMUP["seconds"]:
        train_on_first(min(batch * 16, n_rows))


def readme_mlp(rp, variant="plain"):
    """The README's MLP (``retroprop train --model mlp``, cli.build_model) as a
    user writes it: images (N, 28, 28, 1), Flatten first; with variant
    "dropout" a Dropout(0.2) after each hidden layer, with "l2" an L2(1e-4)
    penalty on every kernel."""
    L = rp.layers
    reg = rp.regularizers.L2(1e-4) if variant == "l2" else None
    layers = [L.Flatten(), L.Dense(256, activation="relu", kernel_regularizer=reg)]
    if variant == "dropout":
        layers.append(L.Dropout(0.2, seed=1))
    layers.append(L.Dense(128, activation="relu", kernel_regularizer=reg))
    if variant == "dropout":
        layers.append(L.Dropout(0.2, seed=2))
    layers.append(L.Dense(10, activation="softmax", kernel_regularizer=reg))
    return rp.Sequential(layers, input_shape=(28, 28, 1), seed=0)


def torch_mlp(torch, variant="plain"):
    nn = torch.nn
    layers = [nn.Flatten(), nn.Linear(784, 256), nn.ReLU()]
    if variant == "dropout":
        layers.append(nn.Dropout(0.2))
    layers += [nn.Linear(256, 128), nn.ReLU()]
    if variant == "dropout":
        layers.append(nn.Dropout(0.2))
    layers.append(nn.Linear(128, 10))
    return nn.Sequential(*layers)


def retroprop_epoch(rp, model, x, y, batch):
    """warm_up then one timed epoch of the README's training call."""
    trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=0.01, momentum=0.9),
                         metrics=["accuracy"])
    warm_up(lambda n: trainer.fit(x[:n] if not isinstance(x, list) else [a[:n] for a in x],
                                  y[:n], epochs=1, batch_size=batch, verbose=0), batch, len(y))
    t0 = time.perf_counter()
    trainer.fit(x, y, epochs=1, batch_size=batch, verbose=0, shuffle=True)
    return time.perf_counter() - t0


def torch_epoch(torch, model, xt, yt, batch, weight_decay_kernels=0.0):
    """warm_up then one timed epoch of the usual PyTorch loop (SGD momentum
    0.9, cross-entropy on logits); xt a tensor or a tuple of tensors."""
    import numpy as np
    if weight_decay_kernels:
        kernels = [p for n, p in model.named_parameters() if n.endswith("weight")]
        others = [p for n, p in model.named_parameters() if not n.endswith("weight")]
        opt = torch.optim.SGD([{"params": kernels, "weight_decay": weight_decay_kernels},
                               {"params": others}], lr=0.01, momentum=0.9)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    lossf = torch.nn.CrossEntropyLoss()
    inputs = xt if isinstance(xt, tuple) else (xt,)

    def epoch(n):
        perm = torch.randperm(n)
        for s in range(0, n, batch):
            idx = perm[s:s + batch]
            opt.zero_grad()
            loss = lossf(model(*(t[idx] for t in inputs)), yt[idx])
            loss.backward()
            opt.step()
    model.train()
    warm_up(epoch, batch, len(yt))
    t0 = time.perf_counter()
    epoch(len(yt))
    del np
    return time.perf_counter() - t0


def child_mlp_epoch(framework, batch, threads, n_train, variant="plain"):
    """Train the README MLP 784-256-128-10 (ReLU, softmax CE, SGD momentum 0.9)
    for one epoch; ``variant``: "plain", "dropout" or "l2" (see readme_mlp)."""
    import numpy as np
    x, y = fashion_subset(n_train)
    if framework == "retroprop":
        import retroprop as rp
        rp.set_num_threads(threads)
        return retroprop_epoch(rp, readme_mlp(rp, variant), x, y, batch)
    x = x.reshape(len(x), -1)
    if framework == "torch":
        import torch
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = torch_mlp(torch, variant)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
        return torch_epoch(torch, model, xt, yt, batch,
                           weight_decay_kernels=2e-4 if variant == "l2" else 0.0)
    if framework == "numpy":
        rng = np.random.default_rng(0)
        sizes = [784, 256, 128, 10]
        W = [(rng.standard_normal((a, b)) * np.sqrt(2 / a)).astype(np.float32) for a, b in zip(sizes, sizes[1:])]
        B = [np.zeros(b, np.float32) for b in sizes[1:]]
        VW = [np.zeros_like(w) for w in W]
        VB = [np.zeros_like(b) for b in B]

        def step(xb, yb):
            acts = [xb]
            for i in range(3):
                z = acts[-1] @ W[i] + B[i]
                acts.append(np.maximum(z, 0) if i < 2 else z)
            z = acts[-1]
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(yb)), yb] -= 1
            d = p / len(yb)
            for i in (2, 1, 0):
                gw, gb = acts[i].T @ d, d.sum(0)
                if i:
                    d = (d @ W[i].T) * (acts[i] > 0)
                VW[i] *= 0.9; VW[i] += gw; W[i] -= 0.01 * VW[i]
                VB[i] *= 0.9; VB[i] += gb; B[i] -= 0.01 * VB[i]

        def epoch(n):
            perm = rng.permutation(n)
            for s in range(0, n, batch):
                idx = perm[s:s + batch]
                step(x[idx], y[idx])
        warm_up(epoch, batch, len(x))
        t0 = time.perf_counter()
        epoch(len(x))
        return time.perf_counter() - t0
    if framework == "sklearn":
        import warnings
        import sklearn.base
        from sklearn.neural_network import MLPClassifier
        clf = MLPClassifier(hidden_layer_sizes=(256, 128), solver="sgd", learning_rate_init=0.01,
                            momentum=0.9, nesterovs_momentum=False, batch_size=batch, max_iter=1,
                            shuffle=True, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # (a fit is one call: the warm-up fits a copy on the first rows)
            warm_up(lambda n: sklearn.base.clone(clf).fit(x[:n], y[:n]), batch, len(x))
            t0 = time.perf_counter()
            clf.fit(x, y)
        return time.perf_counter() - t0
    raise ValueError(framework)


def child_lenet_epoch(framework, batch, threads, n_train):
    """LeNet-5 (conv 6@5x5 same + relu, pool 2, conv 16@5x5 + relu, pool 2, 120, 84, 10), one epoch."""
    import numpy as np
    x, y = fashion_subset(n_train)
    if framework == "retroprop":
        import retroprop as rp
        rp.set_num_threads(threads)
        L = rp.layers
        model = rp.Sequential([L.Conv2D(6, 5, padding="same", activation="relu"), L.MaxPool2D(2),
                               L.Conv2D(16, 5, activation="relu"), L.MaxPool2D(2), L.Flatten(),
                               L.Dense(120, activation="relu"), L.Dense(84, activation="relu"),
                               L.Dense(10, activation="softmax")], input_shape=(28, 28, 1), seed=0)
        trainer = rp.Trainer(model, "categorical_crossentropy", rp.optim.SGD(lr=0.02, momentum=0.9),
                             metrics=["accuracy"])
        warm_up(lambda n: trainer.fit(x[:n], y[:n], epochs=1, batch_size=batch, verbose=0), batch, len(x))
        t0 = time.perf_counter()
        trainer.fit(x, y, epochs=1, batch_size=batch, verbose=0)
        return time.perf_counter() - t0
    if framework == "torch":
        import torch
        import torch.nn as nn
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                              nn.Linear(84, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
        lossf = nn.CrossEntropyLoss()
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        yt = torch.from_numpy(y.astype(np.int64))

        def epoch(n):
            perm = torch.randperm(n)
            for s in range(0, n, batch):
                idx = perm[s:s + batch]
                opt.zero_grad()
                lossf(model(xt[idx]), yt[idx]).backward()
                opt.step()
        warm_up(epoch, batch, len(x))
        t0 = time.perf_counter()
        epoch(len(x))
        return time.perf_counter() - t0
    raise ValueError(framework)


def child_graph_epoch(framework, batch, threads, n_train, variant="graph"):
    """The graph model (variant "graph": inputs top and bottom halves of the
    image, Concatenate, Dense 256, two Dense 128 branches, Add, Dense 10) or
    the same layers as a chain (variant "chain": Flatten, Dense 256, 256, 10),
    one epoch."""
    import numpy as np
    x, y = fashion_subset(n_train)
    top, bottom = np.ascontiguousarray(x[:, :14]), np.ascontiguousarray(x[:, 14:])
    if framework == "retroprop":
        import retroprop as rp
        rp.set_num_threads(threads)
        L = rp.layers
        if variant == "graph":
            a, b = rp.Input((14, 28, 1), name="top"), rp.Input((14, 28, 1), name="bottom")
            joined = L.Concatenate()([L.Flatten()(a), L.Flatten()(b)])
            h = L.Dense(256, activation="relu")(joined)
            s = L.Add()([L.Dense(128, activation="relu")(h), L.Dense(128, activation="relu")(h)])
            model = rp.Model([a, b], L.Dense(10, activation="softmax")(s), seed=0)
            return retroprop_epoch(rp, model, [top, bottom], y, batch)
        model = rp.Sequential([L.Flatten(), L.Dense(256, activation="relu"),
                               L.Dense(256, activation="relu"),
                               L.Dense(10, activation="softmax")], input_shape=(28, 28, 1), seed=0)
        return retroprop_epoch(rp, model, x, y, batch)
    if framework == "torch":
        import torch
        nn = torch.nn
        torch.set_num_threads(threads)
        torch.manual_seed(0)

        class Graph(nn.Module):
            def __init__(self):
                super().__init__()
                self.h = nn.Linear(784, 256)
                self.b1, self.b2 = nn.Linear(256, 128), nn.Linear(256, 128)
                self.out = nn.Linear(128, 10)

            def forward(self, a, b):
                h = torch.relu(self.h(torch.cat([a.flatten(1), b.flatten(1)], dim=1)))
                return self.out(torch.relu(self.b1(h)) + torch.relu(self.b2(h)))
        yt = torch.from_numpy(y.astype(np.int64))
        if variant == "graph":
            return torch_epoch(torch, Graph(), (torch.from_numpy(top), torch.from_numpy(bottom)),
                               yt, batch)
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256),
                              nn.ReLU(), nn.Linear(256, 10))
        return torch_epoch(torch, model, torch.from_numpy(x), yt, batch)
    raise ValueError(framework)


# workload -> (child, variant, threads (None: --threads), batch, peers)
TRAINING = {
    "mlp": (child_mlp_epoch, "plain", None, (32, 128), ("torch", "numpy", "sklearn")),
    "mlp1": (child_mlp_epoch, "plain", 1, (128,), ("torch",)),
    "mlp_dropout": (child_mlp_epoch, "dropout", None, (128,), ("torch",)),
    "mlp_l2": (child_mlp_epoch, "l2", None, (128,), ("torch",)),
    "lenet": (child_lenet_epoch, None, None, (64,), ("torch",)),
    "graph": (child_graph_epoch, "graph", None, (128,), ("torch",)),
    "chain": (child_graph_epoch, "chain", None, (128,), ("torch",)),
}


# ----------------------------------------------------------------------------- CNN workloads (issue 24)

def cnn_retroprop_model(workload):
    """The retroprop model of a CNN workload, as a user writes it."""
    import retroprop as rp
    L = rp.layers
    if workload == "cifar":
        def conv_bn_relu(filters):
            return [L.Conv2D(filters, 3, padding="same"), L.BatchNormalization(),
                    L.Activation("relu")]
        return rp.Sequential(conv_bn_relu(32) + conv_bn_relu(32) + [L.MaxPool2D(2)]
                             + conv_bn_relu(64) + conv_bn_relu(64) + [L.MaxPool2D(2)]
                             + [L.Flatten(), L.Dense(256, activation="relu"),
                                L.Dense(10, activation="softmax")],
                             input_shape=(32, 32, 3), seed=0)
    if workload == "resnet":
        blocks = [L.Residual([L.Conv2D(16, 3, padding="same"), L.BatchNormalization(),
                              L.Activation("relu"), L.Conv2D(16, 3, padding="same"),
                              L.BatchNormalization()], activation="relu")
                  for _ in range(4)]
        return rp.Sequential(blocks + [L.GlobalAvgPool2D(), L.Dense(10, activation="softmax")],
                             input_shape=(32, 32, 16), seed=0)
    if workload == "conv1d":
        return rp.Sequential([L.Conv1D(32, 5, padding="same", activation="relu"), L.MaxPool1D(2),
                              L.Conv1D(64, 5, padding="same", activation="relu"), L.MaxPool1D(2),
                              L.Flatten(), L.Dense(128, activation="relu"),
                              L.Dense(10, activation="softmax")], input_shape=(128, 8), seed=0)
    if workload == "wide_mlp":
        return rp.Sequential([L.Dense(2048, activation="relu"), L.Dense(2048, activation="relu"),
                              L.Dense(10, activation="softmax")], input_shape=(784,), seed=0)
    raise ValueError(workload)


def cnn_torch_model(workload, channels_last=False):
    """The same network in PyTorch (NCHW modules; channels_last is a memory format).
    The Conv1D model with channels_last: Conv2d / MaxPool2d of height 1 on (N, C, 1, L)
    in channels_last memory (what retroprop itself does), as Conv1d has no such layout."""
    import torch
    import torch.nn as nn
    if workload == "cifar":
        def conv_bn_relu(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
        return nn.Sequential(*conv_bn_relu(3, 32), *conv_bn_relu(32, 32), nn.MaxPool2d(2),
                             *conv_bn_relu(32, 64), *conv_bn_relu(64, 64), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(64 * 8 * 8, 256), nn.ReLU(),
                             nn.Linear(256, 10))
    if workload == "resnet":
        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16),
                                           nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                                           nn.BatchNorm2d(16))

            def forward(self, x):
                return torch.relu(self.inner(x) + x)
        return nn.Sequential(*[Block() for _ in range(4)], nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(16, 10))
    if workload == "conv1d" and channels_last:
        return nn.Sequential(nn.Conv2d(8, 32, (1, 5), padding=(0, 2)), nn.ReLU(),
                             nn.MaxPool2d((1, 2)), nn.Conv2d(32, 64, (1, 5), padding=(0, 2)),
                             nn.ReLU(), nn.MaxPool2d((1, 2)), nn.Flatten(),
                             nn.Linear(64 * 32, 128), nn.ReLU(), nn.Linear(128, 10))
    if workload == "conv1d":
        return nn.Sequential(nn.Conv1d(8, 32, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
                             nn.Conv1d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
                             nn.Flatten(), nn.Linear(64 * 32, 128), nn.ReLU(), nn.Linear(128, 10))
    if workload == "wide_mlp":
        return nn.Sequential(nn.Linear(784, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(),
                             nn.Linear(2048, 10))
    raise ValueError(workload)


# (per-sample input shape in retroprop's layout, samples per timed epoch)
CNN_WORKLOADS = {"cifar": ((32, 32, 3), 2048), "resnet": ((32, 32, 16), 2048),
                 "conv1d": ((128, 8), 8192), "wide_mlp": ((784,), 4096)}


def cnn_data(workload, n_train):
    import numpy as np
    shape, _ = CNN_WORKLOADS[workload]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n_train,) + shape).astype(np.float32)
    y = rng.integers(0, 10, n_train)
    reset_peak_rss()
    return x, y


def torch_layout(x, workload, channels_last):
    """x (retroprop's channels-last layout) as PyTorch's input tensor."""
    import numpy as np
    import torch
    if x.ndim == 4:
        t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        return t.contiguous(memory_format=torch.channels_last) if channels_last else t
    if x.ndim == 3:
        t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 1)))
        # channels_last: the (N, C, 1, L) image of the height-1 Conv2d model
        return t[:, :, None, :].contiguous(memory_format=torch.channels_last) if channels_last \
            else t
    return torch.from_numpy(x)


def torch_trainer(workload, framework, x, y):
    """(model, epoch(n)) for PyTorch; framework "torch" (NCHW) or "torch_cl" (channels_last)."""
    import numpy as np
    import torch
    torch.manual_seed(0)
    channels_last = framework == "torch_cl"
    model = cnn_torch_model(workload, channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    lossf = torch.nn.CrossEntropyLoss()
    xt = torch_layout(x, workload, channels_last)
    yt = torch.from_numpy(y.astype(np.int64))
    batch = CNN_BATCH["value"]

    def epoch(n):
        perm = torch.randperm(n)
        for s in range(0, n, batch):
            idx = perm[s:s + batch]
            xb = xt[idx]
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            opt.zero_grad()
            lossf(model(xb), yt[idx]).backward()
            opt.step()
    return model, epoch


CNN_BATCH = {"value": 64}


def child_cnn_epoch(workload, framework, batch, threads, n_train):
    """One epoch of a CNN workload (see CNN_WORKLOADS) on synthetic data."""
    x, y = cnn_data(workload, n_train)
    CNN_BATCH["value"] = batch
    if framework == "retroprop":
        import retroprop as rp
        rp.set_num_threads(threads)
        model = cnn_retroprop_model(workload)
        trainer = rp.Trainer(model, "categorical_crossentropy",
                             rp.optim.SGD(lr=0.01, momentum=0.9), metrics=[])
        warm_up(lambda n: trainer.fit(x[:n], y[:n], epochs=1, batch_size=batch, verbose=0),
                batch, len(x))
        t0 = time.perf_counter()
        trainer.fit(x, y, epochs=1, batch_size=batch, verbose=0, shuffle=True)
        seconds = time.perf_counter() - t0
        if LAYERS["on"]:
            LAYERS["result"] = retroprop_layer_times(model, x[:batch])
        return seconds
    import torch
    torch.set_num_threads(threads)
    model, epoch = torch_trainer(workload, framework, x, y)
    warm_up(epoch, batch, len(x))
    t0 = time.perf_counter()
    epoch(len(x))
    seconds = time.perf_counter() - t0
    if LAYERS["on"]:
        LAYERS["result"] = torch_layer_times(model, torch_layout(x[:batch], workload,
                                                                 framework == "torch_cl"))
    return seconds


# --layers: per-layer forward and backward times (minimum of LAYER_REPEATS)
LAYERS = {"on": False, "result": None}
LAYER_REPEATS = 15


def retroprop_layer_times(model, xb):
    """[(name, forward s, backward s)] of each top-level layer, a training step's
    forward then backward (minimum of LAYER_REPEATS)."""
    import numpy as np
    layers = model.layers
    fwd = [float("inf")] * len(layers)
    bwd = [float("inf")] * len(layers)
    dy = None
    for _ in range(LAYER_REPEATS):
        h = xb
        for i, layer in enumerate(layers):
            t0 = time.perf_counter()
            h = layer.forward(h, training=True)
            fwd[i] = min(fwd[i], time.perf_counter() - t0)
        if dy is None:
            dy = np.random.default_rng(0).standard_normal(h.shape).astype(h.dtype) / h.shape[0]
        g = dy
        for i in range(len(layers) - 1, -1, -1):
            t0 = time.perf_counter()
            g = layers[i].backward(g, need_dx=i > 0)
            bwd[i] = min(bwd[i], time.perf_counter() - t0)
    return [(type(layer).__name__, f, b) for layer, f, b in zip(layers, fwd, bwd)]


def torch_layer_times(model, xb):
    """[(name, forward s, backward s)] of each top-level module: forward alone, then
    forward + backward from a fixed upstream gradient, on the module's own input
    (minimum of LAYER_REPEATS); backward = the difference."""
    import torch
    inputs = []
    h = xb
    with torch.no_grad():
        for module in model:
            inputs.append(h)
            h = module(h)
    result = []
    for i, module in enumerate(model):
        x = inputs[i].detach().clone().requires_grad_(i > 0)
        if x.dim() == 4 and xb.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        params = [p for p in module.parameters()]
        out = module(x)
        g = torch.randn_like(out)
        fwd = both = float("inf")
        for _ in range(LAYER_REPEATS):
            t0 = time.perf_counter()
            out = module(x)
            fwd = min(fwd, time.perf_counter() - t0)
            wrt = params + ([x] if i > 0 else [])
            t0 = time.perf_counter()
            out = module(x)
            if wrt:
                torch.autograd.grad(out, wrt, g)
            both = min(both, time.perf_counter() - t0)
        result.append((type(module).__name__, fwd, max(both - fwd, 0.0)))
    return result


def child_sgemm(threads, sizes=(1024, 2048), rounds=5):
    """float32 C = A B: retroprop's GEMM and NumPy's matmul, interleaved, in this
    process (started without OPENBLAS_CORETYPE: OpenBLAS's own choice of kernel)."""
    import numpy as np
    import retroprop as rp
    from retroprop.backend import cpu
    rp.set_num_threads(threads)
    kernel = "?"
    try:
        from threadpoolctl import threadpool_info
        kernel = ", ".join(f"{i['internal_api']} {i.get('architecture', '?')}"
                           for i in threadpool_info() if i["user_api"] == "blas")
    except ImportError:
        pass
    times = {}
    for n in sizes:
        rng = np.random.default_rng(n)
        a = rng.standard_normal((n, n)).astype(np.float32)
        b = rng.standard_normal((n, n)).astype(np.float32)
        c = np.empty((n, n), np.float32)
        fns = {"retroprop": lambda: cpu.gemm(a, b, c), "numpy": lambda: np.matmul(a, b, out=c)}
        got = {f: [] for f in fns}
        for _ in range(rounds):
            for f, fn in fns.items():
                fn()
                t0 = time.perf_counter()
                fn()
                got[f].append(time.perf_counter() - t0)
        times[n] = {f: summarise(v) for f, v in got.items()}
    return {"times": times, "openblas": kernel}


CHILDREN = {}
for _workload in CNN_WORKLOADS:
    CHILDREN[_workload] = (lambda w: lambda framework, batch, threads, n_train:
                           child_cnn_epoch(w, framework, batch, threads, n_train))(_workload)


def run_child(workload, framework, batch, threads, n_train):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", workload, "--framework", framework,
           "--batch", str(batch), "--threads", str(threads), "--n-train", str(n_train),
           "--warmup", str(WARMUP["seconds"])] + (["--layers"] if LAYERS["on"] else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_main(args):
    if args.child == "sgemm":
        print(json.dumps(child_sgemm(args.threads)))
        return
    LAYERS["on"] = args.layers
    if args.child in TRAINING:
        child, variant, _, _, _ = TRAINING[args.child]
        extra = () if variant is None else (variant,)
        seconds = child(args.framework, args.batch, args.threads, args.n_train, *extra)
    else:
        seconds = CHILDREN[args.child](args.framework, args.batch, args.threads, args.n_train)
    rss_mib = peak_rss_mib()
    print(json.dumps({"seconds": seconds, "peak_rss_mib": rss_mib, "layers": LAYERS["result"]}))


# ----------------------------------------------------------------------------- micro workloads

def micro_dense(threads, shapes, frameworks, rounds=3):
    """Fused dense forward (x W + b, ReLU) and backward (dW, db, dx) per framework."""
    import numpy as np
    from retroprop.backend import cpu
    results = []
    for n, k, m in shapes:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, k)).astype(np.float32)
        w = (rng.standard_normal((k, m)) / np.sqrt(k)).astype(np.float32)
        b = rng.standard_normal(m).astype(np.float32)
        dy = rng.standard_normal((n, m)).astype(np.float32)
        y = np.empty((n, m), np.float32)
        dw, db, dx = np.empty_like(w), np.empty_like(b), np.empty_like(x)
        fns = {}
        fns["retroprop"] = (lambda: cpu.dense_forward(x, w, b, "relu", y),
                            lambda: cpu.dense_backward(x, w, y, dy, "relu", dw, db, dx))
        yn = np.empty((n, m), np.float32)

        def np_fwd():
            np.matmul(x, w, out=yn)
            np.add(yn, b, out=yn)
            np.maximum(yn, 0, out=yn)

        def np_bwd():
            dz = dy * (yn > 0)
            np.matmul(x.T, dz, out=dw)
            dz.sum(0, out=db)
            np.matmul(dz, w.T, out=dx)
        fns["numpy"] = (np_fwd, np_bwd)
        if "torch" in frameworks:
            import torch
            tx, tw, tb, tdy = (torch.from_numpy(a) for a in (x, w, b, dy))
            ty = torch.empty(n, m)

            def t_fwd():
                torch.addmm(tb, tx, tw, out=ty)
                torch.relu_(ty)

            def t_bwd():
                dz = tdy * (ty > 0)
                torch.mm(tx.t(), dz)
                dz.sum(0)
                torch.mm(dz, tw.t())
            fns["torch"] = (t_fwd, t_bwd)
        for phase, index in (("forward", 0), ("backward", 1)):
            times = {f: [] for f in fns}
            for _ in range(rounds):  # interleave the frameworks
                for f, pair in fns.items():
                    times[f].append(time_call(pair[index]))
            results.append({"workload": f"dense {phase} {n}x{k}x{m}",
                            "times": {f: summarise(t) for f, t in times.items()}})
    return results


def micro_gemm(threads, sizes, frameworks, rounds=3):
    """Raw float32 GEMM C = A B (no bias, no activation) against NumPy's matmul (OpenBLAS)."""
    import numpy as np
    from retroprop.backend import cpu
    results = []
    for n in sizes:
        rng = np.random.default_rng(n)
        a = rng.standard_normal((n, n)).astype(np.float32)
        b = rng.standard_normal((n, n)).astype(np.float32)
        c = np.empty((n, n), np.float32)
        fns = {"retroprop": lambda: cpu.gemm(a, b, c), "numpy": lambda: np.matmul(a, b, out=c)}
        if "torch" in frameworks:
            import torch
            ta, tb, tc = (torch.from_numpy(m) for m in (a, b, c))
            fns["torch"] = lambda: torch.mm(ta, tb, out=tc)
        times = {f: [] for f in fns}
        for _ in range(rounds):
            for f, fn in fns.items():
                times[f].append(time_call(fn))
        results.append({"workload": f"gemm {n}x{n}x{n}",
                        "times": {f: summarise(t) for f, t in times.items()}})
    return results


# Conv2D layer shapes: (batch, H, W, C_in, filters, kernel, padding)
CONV_SHAPES = [(64, 28, 28, 1, 6, 5, "same"),      # LeNet-5 first layer
               (64, 14, 14, 6, 16, 5, "valid"),    # LeNet-5 second layer
               (32, 32, 32, 16, 32, 3, "same")]    # a CIFAR-sized 3x3 layer


def micro_conv(threads, frameworks, rounds=3):
    """Conv2D + ReLU forward, then backward (dW, db, and dx unless the layer
    reads the images themselves, as a first layer does), per framework."""
    import numpy as np
    import retroprop as rp
    results = []
    for n, h, w, c, filters, k, padding in CONV_SHAPES:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, h, w, c)).astype(np.float32)
        model = rp.Sequential([rp.layers.Conv2D(filters, k, padding=padding, activation="relu")],
                              input_shape=(h, w, c), seed=0)
        layer = model.layers[0]
        y = model.forward(x, training=True)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        need_dx = c > 1       # a single-channel input is the image: a first layer

        def ours():
            model.forward(x, training=True)
            layer.backward(dy, need_dx=need_dx)
        fns = {"retroprop": ours}
        if "torch" in frameworks:
            import torch
            import torch.nn.functional as F
            tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_(need_dx)
            tw = torch.from_numpy(np.ascontiguousarray(
                layer.params["W"].transpose(3, 2, 0, 1))).requires_grad_(True)
            tb = torch.from_numpy(layer.params["b"].copy()).requires_grad_(True)
            tdy = torch.from_numpy(np.ascontiguousarray(dy.transpose(0, 3, 1, 2)))
            pad = k // 2 if padding == "same" else 0

            def t_step():
                for t in (tx, tw, tb):
                    t.grad = None
                torch.relu(F.conv2d(tx, tw, tb, padding=pad)).backward(tdy)
            fns["torch"] = t_step
        times = {f: [] for f in fns}
        for _ in range(rounds):
            for f, fn in fns.items():
                times[f].append(time_call(fn))
        results.append({"workload": f"conv {n}x{h}x{w}x{c} -> {filters}@{k}x{k} fwd+bwd"
                                    + ("" if need_dx else " (no dx)"),
                        "times": {f: summarise(t) for f, t in times.items()}})
    return results


def micro_latency(threads, frameworks, rounds=3):
    """Single-sample inference of the README MLP (an image (1, 28, 28, 1),
    Flatten first), with ``model.forward``."""
    import numpy as np
    import retroprop as rp
    model = readme_mlp(rp)
    x = np.random.default_rng(0).random((1, 28, 28, 1), dtype=np.float32)
    fns = {"retroprop": lambda: model.forward(x)}
    Ws = [p for _, _, p, _ in model.parameters()]

    def np_forward():
        h = np.maximum(x.reshape(1, -1) @ Ws[0] + Ws[1], 0)
        h = np.maximum(h @ Ws[2] + Ws[3], 0)
        z = h @ Ws[4] + Ws[5]
        e = np.exp(z - z.max())
        return e / e.sum()
    fns["numpy"] = np_forward
    if "torch" in frameworks:
        import torch
        net = torch.nn.Sequential(torch_mlp(torch), torch.nn.Softmax(dim=1)).eval()
        tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

        def t_forward():
            with torch.inference_mode():
                return net(tx)
        fns["torch"] = t_forward
    times = {f: [] for f in fns}
    for _ in range(rounds):
        for f, fn in fns.items():
            times[f].append(time_call(fn))
    return [{"workload": "README MLP single-sample inference",
             "times": {f: summarise(t) for f, t in times.items()}}]


# ----------------------------------------------------------------------------- contention

# A busy machine: one CPU-bound process on every core, started and stopped
# here, while an MLP epoch of CONTENTION_SAMPLES trains at one thread and at
# every core's thread. Threads that spin while a descheduled partner waits
# for its turn made the second slower than the first (issue 23); the ratio
# (all threads / one thread) should not exceed ~1.1. Opt-in (--only
# contention): the hogs slow down everything else running on the machine.
CONTENTION_SAMPLES = 4096
CONTENTION_BATCH = 128


def start_hogs(seconds):
    """One busy-looping process per core; each exits by itself after `seconds`,
    so none outlives the benchmark even if this process is killed."""
    code = ("import time\nend = time.monotonic() + %r\n"
            "while time.monotonic() < end:\n    pass\n" % float(seconds))
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(os.cpu_count() or 1)]


def stop_hogs(hogs):
    for hog in hogs:
        hog.kill()
    for hog in hogs:
        hog.wait()


def contention_workload(frameworks, repeats, max_seconds=900):
    """{"workload", "times", "contention"}: per framework the epoch time at one
    thread and at os.cpu_count() threads with a hog per core (minimum or median
    of interleaved repetitions, each in a fresh child), and their ratio."""
    all_threads = os.cpu_count() or 1
    peers = [f for f in frameworks if f in ("retroprop", "torch")]
    times = {(f, t): [] for f in peers for t in (1, all_threads)}
    hogs = start_hogs(max_seconds)
    try:
        time.sleep(0.5)
        for _ in range(repeats):
            for f in peers:
                for t in (1, all_threads):
                    r = run_child("mlp", f, CONTENTION_BATCH, t, CONTENTION_SAMPLES)
                    if "error" in r:
                        print(f"# contention {f} {t} threads: {r['error']}")
                        continue
                    times[(f, t)].append(r["seconds"])
    finally:
        stop_hogs(hogs)
    summary = {f"{f} {t}t": summarise(v) for (f, t), v in times.items() if v}
    ratios = {f: summary[f"{f} {all_threads}t"] / summary[f"{f} 1t"] for f in peers
              if f"{f} 1t" in summary and f"{f} {all_threads}t" in summary}
    return {"workload": f"contention: mlp epoch ({CONTENTION_SAMPLES} samples) batch "
                        f"{CONTENTION_BATCH}, a hog per core",
            "times": summary, "contention": ratios, "threads": all_threads}


def print_contention(row):
    print(f"{row['workload']}: epoch time at 1 and {row['threads']} threads ({STAT['name']}, ms)")
    for name, seconds in row["times"].items():
        print(f"  {name:>16}: {seconds * 1e3:9.1f}")
    for f, ratio in row["contention"].items():
        print(f"  {f}: {row['threads']} threads / 1 thread = {ratio:.2f}")


# ----------------------------------------------------------------------------- main

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3,
                   help="interleaved repetitions of each workload (micro workloads: at least 3)")
    p.add_argument("--quick", action="store_true", help="fewer shapes and a 12,000-sample epoch")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--stat", choices=("median", "min"), default="median",
                   help="statistic of the repeated timings in the table (default: median)")
    p.add_argument("--warmup", type=float, default=0.5,
                   help="seconds each training child trains before its timed epoch, after four "
                        "batches (default: 0.5; 0 = the four batches only)")
    p.add_argument("--only", default=None,
                   help="comma-separated workloads to run: micro, " + ", ".join(TRAINING)
                        + " (default: all)")
    p.add_argument("--layers", action="store_true",
                   help="with --only cifar: per-layer forward/backward times of each framework")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--framework", default=None, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=32, help=argparse.SUPPRESS)
    p.add_argument("--n-train", type=int, default=60000, help=argparse.SUPPRESS)
    args = p.parse_args()
    set_thread_env(args.threads)
    if not 0 <= args.warmup < float("inf"):
        p.error(f"--warmup: seconds must be a finite number >= 0, got {args.warmup}")
    WARMUP["seconds"] = args.warmup
    if args.stat == "min":
        STAT.update(fn=min, name="minimum")
    if args.child:
        child_main(args)
        return

    import numpy as np
    import retroprop as rp
    frameworks = ["retroprop", "numpy"]
    try:
        import torch
        frameworks.insert(1, "torch")
        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    try:
        import sklearn
        have_sklearn = True
    except ImportError:
        have_sklearn = False
    rp.set_num_threads(args.threads)
    info = rp.backend_info()
    machine = {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
               "retroprop": rp.__version__, "simd": info["simd"], "numpy": np.__version__,
               "torch": torch_version, "python": platform.python_version(),
               "warmup_s": WARMUP["seconds"]}
    try:
        with open("/proc/cpuinfo") as f:
            machine["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"# {machine}")

    only = None if args.only is None else set(args.only.split(","))
    if only is not None and "cnn-goals" in only:
        only = (only - {"cnn-goals"}) | {"cifar", "resnet", "conv1d", "wide_mlp", "sgemm", "lenet"}
    known = {"micro", "contention", "sgemm"} | set(TRAINING) | set(CNN_WORKLOADS)
    if only is not None and not only <= known:
        p.error(f"--only: unknown workload in {args.only!r} "
                f"(choose from {', '.join(sorted(known))}, cnn-goals)")
    LAYERS["on"] = args.layers

    shapes = [(256, 256, 256), (1024, 1024, 1024), (32, 784, 256), (128, 784, 256), (128, 256, 128)]
    if not args.quick:
        shapes = [(512, 512, 512), (2048, 2048, 2048), (1, 784, 256)] + shapes
    rows = []
    gemm_sizes = [512, 1024] if args.quick else [512, 1024, 2048]
    if only is None or "micro" in only:
        rounds = max(3, args.repeats)
        rows = (micro_gemm(args.threads, gemm_sizes, frameworks, rounds)
                + micro_dense(args.threads, shapes, frameworks, rounds)
                + micro_latency(args.threads, frameworks, rounds))
        if hasattr(rp.layers, "Conv2D"):
            rows += micro_conv(args.threads, frameworks, rounds)

    n_train = 12000 if args.quick else 60000
    training = []
    for workload, (_, _, threads, batches, peers) in TRAINING.items():
        if only is not None and workload not in only:
            continue
        if workload == "lenet" and not hasattr(rp.layers, "Conv2D"):
            continue
        for batch in batches:
            training.append((workload, batch, threads or args.threads, peers))
    for workload, batch, threads, wanted in training:
        peers = ["retroprop"] + [f for f in wanted if f in frameworks
                                 or (f == "sklearn" and have_sklearn)]
        times = {f: [] for f in peers}
        rss = {f: [] for f in peers}
        for _ in range(args.repeats):
            for f in peers:
                r = run_child(workload, f, batch, threads, n_train)
                if "error" in r:
                    print(f"# {workload} {f}: {r['error']}")
                    continue
                times[f].append(r["seconds"])
                rss[f].append(r["peak_rss_mib"])
        label = f"{workload} epoch ({n_train} samples) batch {batch}"
        if threads != args.threads:
            label += f", {threads} thread" + ("s" if threads > 1 else "")
        rows.append({"workload": label,
                     "times": {f: summarise(t) for f, t in times.items() if t},
                     "peak_rss_mib": {f: max(v) for f, v in rss.items() if v}})

    goals = cnn_goal_rows(only, frameworks, args) if only is not None else []

    contention = None
    if only is not None and "contention" in only:
        contention = contention_workload(frameworks, args.repeats)
        if only == {"contention"}:
            print_contention(contention)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump({"machine": machine, "statistic": STAT["name"],
                               "results": [contention]}, f, indent=1)
            return

    if rows:
        print_table(rows)
    if contention is not None:
        print_contention(contention)
        rows.append(contention)
    for r in rows:
        if "peak_rss_mib" in r:
            print(f"peak RSS, {r['workload']}: " +
                  ", ".join(f"{f} {v:.0f} MiB" for f, v in r["peak_rss_mib"].items()))
    graph = [r for r in rows if r["workload"].startswith("graph epoch")]
    chain = [r for r in rows if r["workload"].startswith("chain epoch")]
    if graph and chain and "retroprop" in graph[0]["times"] and "retroprop" in chain[0]["times"]:
        ratio = graph[0]["times"]["retroprop"] / chain[0]["times"]["retroprop"]
        print(f"retroprop graph model / the same layers as a chain, per sample: {ratio:.2f}")
    if goals:
        print_goal_rows(goals, rows, args.threads)
        rows.extend(goals)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "statistic": STAT["name"], "results": rows}, f, indent=1)


def print_table(rows):
    """The table of the default workloads: retroprop against each peer."""
    peers = [f for f in ("torch", "numpy", "sklearn") if any(f in r["times"] for r in rows)]
    header = f"| {'workload':<46} | {'retroprop':>10} | " + " | ".join(f"{p:>9} | {'ratio':>6}" for p in peers) + " |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in rows:
        t = r["times"]
        ours = t.get("retroprop")
        cells = []
        for peer in peers:
            if peer in t and ours:
                cells.append(f"{t[peer] * 1e3:9.3f} | {ours / t[peer]:6.2f}")
            else:
                cells.append(f"{'-':>9} | {'-':>6}")
        ours_s = f"{ours * 1e3:10.3f}" if ours else f"{'-':>10}"
        print(f"| {r['workload']:<46} | {ours_s} | " + " | ".join(cells) + " |")
    print(f"times are the {STAT['name']} of interleaved repetitions, in ms; "
          f"ratio = retroprop / peer (below 1: retroprop faster); training epochs timed after "
          f"{WARMUP['seconds']:g} s of warm-up training")


# ----------------------------------------------------------------------------- CNN goal table

# (workload, batch, goal: retroprop / faster PyTorch layout at most this)
CNN_GOALS = [("cifar", 64, 0.70), ("cifar", 128, 0.70), ("resnet", 64, 0.70), ("lenet", 64, 0.40),
             ("conv1d", 64, 0.60), ("wide_mlp", 256, 0.60)]


def cnn_goal_rows(only, frameworks, args):
    """Rows of the CNN workloads asked for: epochs in fresh children per framework
    and repetition, interleaved (retroprop, PyTorch NCHW, PyTorch channels_last)."""
    results = []
    if "torch" not in frameworks:
        print("# CNN workloads: PyTorch is not importable; retroprop alone")
    for workload, batch, goal in CNN_GOALS:
        # (LeNet's row comes from the training table: print_goal_rows adds it)
        if workload not in only or workload == "lenet":
            continue
        peers = ["retroprop"] + (["torch", "torch_cl"] if "torch" in frameworks else [])
        if workload == "wide_mlp" and "torch_cl" in peers:
            peers.remove("torch_cl")     # no channels_last for 2-D tensors
        n_train = CNN_WORKLOADS[workload][1] * batch // 64
        times = {f: [] for f in peers}
        layers = {}
        for _ in range(args.repeats):
            for f in peers:
                r = run_child(workload, f, batch, args.threads, n_train)
                if "error" in r:
                    print(f"# {workload} {f}: {r['error']}")
                    continue
                times[f].append(r["seconds"])
                if r.get("layers"):
                    layers.setdefault(f, []).append(r["layers"])
        row = {"workload": f"{workload} epoch ({n_train} samples) batch {batch}",
               "times": {f: summarise(t) for f, t in times.items() if t}, "goal": goal,
               "threads": args.threads}
        if layers:
            # per layer, the minimum over the repetitions
            row["layers"] = {f: [(entries[0][i][0], min(e[i][1] for e in entries),
                                  min(e[i][2] for e in entries)) for i in range(len(entries[0]))]
                             for f, entries in layers.items()}
        results.append(row)
    if "sgemm" in only:
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "sgemm",
               "--threads", str(args.threads), "--stat", args.stat]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
        if out.returncode != 0:
            print(f"# sgemm: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else 'failed'}")
        else:
            r = json.loads(out.stdout.strip().splitlines()[-1])
            for n, t in r["times"].items():
                results.append({"workload": f"sgemm {n}^3 (OpenBLAS: {r['openblas']})",
                                "times": t, "goal": 1 / 0.90, "threads": args.threads})
    return results


def print_goal_rows(goals, rows, threads):
    """The goal table: retroprop against the faster PyTorch layout (NumPy for sgemm)."""
    lenet = next((r for r in rows if r["workload"].startswith("lenet")), None)
    if lenet is not None:
        goals = goals + [{"workload": lenet["workload"], "times": lenet["times"], "goal": 0.40,
                          "threads": threads}]
    print(f"\nCNN goals at {threads} thread(s) ({STAT['name']} of interleaved repetitions, ms; "
          f"ratio = retroprop / the faster peer; sgemm: time ratio, goal <= 1/0.90)")
    print(f"| {'workload':<58} | {'retroprop':>9} | {'torch NCHW':>10} | {'torch CL':>9} | "
          f"{'numpy':>8} | {'ratio':>5} | {'goal':>5} | {'holds':>5} |")
    print("|" + "|".join("-" * n for n in (60, 11, 12, 11, 10, 7, 7, 7)) + "|")
    for r in goals:
        t = r["times"]
        peer = min((t[f] for f in ("torch", "torch_cl", "numpy") if f in t), default=None)
        ours = t.get("retroprop")
        ratio = ours / peer if ours and peer else float("nan")

        def cell(f, width):
            return f"{t[f] * 1e3:{width}.1f}" if f in t else f"{'-':>{width}}"
        print(f"| {r['workload']:<58} | {cell('retroprop', 9)} | {cell('torch', 10)} | "
              f"{cell('torch_cl', 9)} | {cell('numpy', 8)} | {ratio:5.2f} | {r['goal']:5.2f} | "
              f"{'yes' if ratio <= r['goal'] else 'no':>5} |")
    for r in goals:
        for f, layers in r.get("layers", {}).items():
            print(f"\nper layer, {r['workload']}, {f} (forward / backward, ms, minimum):")
            for name, fwd, bwd in layers:
                print(f"  {name:<24} {fwd * 1e3:8.3f} {bwd * 1e3:8.3f}")
            print(f"  {'sum':<24} {sum(x[1] for x in layers) * 1e3:8.3f} "
                  f"{sum(x[2] for x in layers) * 1e3:8.3f}")


if __name__ == "__main__":
    main()
