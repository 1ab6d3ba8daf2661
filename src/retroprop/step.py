"""Step programs: a plan (plan.py) lowered to C records, for the C backend.

A training step of a model spends its time in kernels, but at a small batch
the Python between the kernels (checks, buffer lookups, ~5 us a layer) is a
large part of it. A *step program* makes that Python happen once: each node
of the plan that has a C form becomes one or more records (csrc/cpu/plan.c,
retroprop/plan.h) naming the kernel the layer itself would call and its
arrays, checked once by the binding when the program is made. A step is then
one C call per stretch of records, with the GIL released: for the README's
MLP (Flatten, three Dense layers, softmax + cross-entropy, SGD, accuracy)
the whole step, optimizer and metric included, is a single call.

What has a C form (``_lower_forward`` / ``_lower_backward``):

* Dense with an activation the GEMM write-back fuses (linear, relu, sigmoid,
  tanh, step, leaky_relu, elu) or softmax (with the fused softmax +
  cross-entropy loss when training); an ``Activation`` layer right after a
  linear Dense or Conv2D whose output nothing else reads is fused into it;
* Conv1D/Conv2D with a fused activation, MaxPool/AvgPool 1D/2D (the model's
  workspace as im2col memory, laid out as the layers lay it out);
* Activation (elementwise), Dropout (its mask drawn in C from the layer's own
  NumPy generator, exactly as ``Generator.random`` draws it), Flatten and
  Reshape (views: no record), Add, Concatenate on the last axis;
* the loss when it is softmax + categorical cross-entropy on the softmax
  layer's logits; L1/L2 regularizers (their penalty and gradient in one
  pass); the optimizer step over every parameter (with its finiteness check
  or the tracked bounds, optim.h); the accuracy metric.

Any other node runs as a Python call between two stretches (the layer's own
forward/backward, exactly as plan.py runs it); so does any other loss or
metric. The records call the same kernels in the same order on the same
arrays as the node-by-node step, so the weights after any number of steps
are bit-identical to it (tests/test_step_program.py); only the logged loss
of a regularized model may differ in its last bits (the penalty's sum is
added in another order).

While the small top layer of a classifier runs (its forward, the loss and
its backward, on one thread anyway), the other threads copy the next
shuffled batch (``RP_REC_OVERLAP_GATHER``).

A program is rebuilt (``StepProgram.still_valid``) when its plan is, or when
any array it points to or anything it baked in changed: a parameter or
gradient array replaced, an activation, a regularizer, a dropout rate or
generator, ``trainable``, ``use_bias``; and the Trainer makes a new one for
a new optimizer or batch size.
"""
import numpy as np

from . import aligned
from . import metrics as metrics_module
from . import regularizers as regularizers_module
from .layers.activation import Activation
from .layers.conv import Conv1D, Conv2D
from .layers.dense import Dense
from .layers.dropout import Dropout
from .layers.flatten import Flatten
from .layers.merge import Add, Concatenate
from .layers.pool import AvgPool1D, AvgPool2D, MaxPool1D, MaxPool2D
from .layers.reshape import Reshape
from .losses import CategoricalCrossentropy

# csrc/cpu/loss_internal.h, RP_LOSS_ROWS_PARALLEL_MIN: below this many logits
# the softmax cross-entropy runs on one thread (so it may overlap the gather).
_LOSS_ROWS_PARALLEL_MIN = 65536
_REGULARIZERS = (regularizers_module.L1L2, regularizers_module.L1, regularizers_module.L2)
_POOLS = (MaxPool1D, MaxPool2D, AvgPool1D, AvgPool2D)


def supported(backend):
    """Whether ``backend`` runs step programs (the C backend does)."""
    return hasattr(backend, "program")


def _regularizers_lowerable(layer):
    return all(r is None or type(r) in _REGULARIZERS
               for r in (getattr(layer, "kernel_regularizer", None),
                         getattr(layer, "bias_regularizer", None)))


def _fusable(activation):
    return activation is not None and activation.fusable


_WATCHED_INFERENCE = ("activation", "use_bias")
_WATCHED_TRAINING = _WATCHED_INFERENCE + ("trainable", "kernel_regularizer", "bias_regularizer",
                                          "rate", "_rng", "name")


def watch(layer, training):
    """What a program assumes about a layer it lowered, to compare before
    every run (:func:`unchanged`): the attributes it baked in (by identity)
    and the arrays it points to."""
    d = layer.__dict__
    keys = _WATCHED_TRAINING if training else _WATCHED_INFERENCE
    activation = d.get("activation")
    return (d, tuple((k, d.get(k)) for k in keys), activation,
            getattr(activation, "param", None), layer.params, tuple(layer.params.values()),
            layer.grads if training else None,
            tuple(layer.grads.values()) if training else None)


def unchanged(watched):
    """True while a layer is as :func:`watch` saw it."""
    d, attributes, activation, param, params, param_arrays, grads, grad_arrays = watched
    for key, value in attributes:
        if d.get(key) is not value:
            return False
    if activation is not None and activation.param != param:
        return False
    if d.get("params") is not params or len(params) != len(param_arrays):
        return False
    for a, b in zip(params.values(), param_arrays):
        if a is not b:
            return False
    if grads is not None:
        if d.get("grads") is not grads or len(grads) != len(grad_arrays):
            return False
        for a, b in zip(grads.values(), grad_arrays):
            if a is not b:
                return False
    return True


class _Logits:
    """What a fused loss reads of a layer whose forward ran in C: ``logits``,
    the program's buffer of its pre-activation (softmax), or None when a fused
    activation kept none (as the layer's own forward leaves it)."""

    def __init__(self, logits):
        self.logits = logits


class StepProgram:
    """A plan lowered to a C program: a training step (``objective`` and
    ``optimizer`` given) or a forward pass (inference plans).

    Build once per plan (batch size, mode) and Trainer; run with :meth:`step`
    or :meth:`forward`."""

    def __init__(self, plan, objective=None, optimizer=None, metric_fns=(), target_kinds=()):
        self.plan = plan
        self.model = plan.model
        self.backend = plan.backend
        self.dtype = plan.dtype
        self.batch = plan.batch
        self.training = objective is not None
        self.objective = objective
        self.optimizer = optimizer
        self.metric_fns = list(metric_fns)
        self.target_kinds = tuple(target_kinds)
        self.table, self._index = [], {}
        self.records, self.segments = [], []
        self._segment_start = 0
        self._keep = []                       # arrays made here (kept alive)
        self.values = [None] * plan.n_slots   # the runtime value of each slot
        self.value_index = [None] * plan.n_slots
        self._input_views = []                # (slot, base slot, shape): views of inputs
        self._watched = []
        self._lowered_layers = {}
        self.per_output_values = [0.0] * len(plan.output_slots)
        self._c_losses = []                   # output indices whose loss is a C record
        self._c_accuracy = []                 # (output index, metric position)
        self._info = {}                       # id(step) -> what its forward records made
        self._copy_to = {}                    # runtime gradient key -> the array records read
        # Whether the step clips gradients before the update (a Python action).
        self._clips = optimizer is not None and optimizer.clips_gradients
        self._build()
        self.program = self.backend.program(self.dtype, self.table, self.records,
                                            max(1, len(plan.output_slots)))
        self.version = plan.version
        self.n_records = len(self.records)
        # The per-call arrays of a run: the inputs (the first table entries),
        # then the targets in the order their entries were made.
        made = sorted((index, k) for k, index in enumerate(self._target_index)
                      if index is not None)
        self._target_outputs = [k for _, k in made]
        c_segments = [i for i, segment in enumerate(self.segments) if segment[0] == "c"]
        self._last_c = c_segments[-1] if c_segments else -1
        self._only = self.segments[0] if len(self.segments) == 1 and c_segments else None
        self._outputs = [self.values[s] for s in plan.output_slots]

    # -- tables and records ---------------------------------------------------------

    def _array(self, arr):
        """The table index of a fixed array (one entry per array object)."""
        key = id(arr)
        index = self._index.get(key)
        if index is None:
            index = self._index[key] = len(self.table)
            self.table.append(arr)
            self._keep.append(arr)
        return index

    def _new(self, shape, dtype=None):
        """A fresh, aligned buffer of the program and its index."""
        arr = aligned.empty(tuple(int(s) for s in shape), self.dtype if dtype is None else dtype)
        return arr, self._array(arr)

    def _view(self, index, shape):
        """An entry seeing the memory of entry ``index`` with another shape."""
        entry = self.table[index]
        shape = tuple(int(s) for s in shape)
        if isinstance(entry, np.ndarray):
            return self._array(entry.reshape(shape))
        if entry[0] == "view" and tuple(entry[2]) == shape:
            return index
        self.table.append(("view", index, shape))
        return len(self.table) - 1

    def _per_call(self, spec):
        self.table.append(spec)
        return len(self.table) - 1

    def _emit(self, kind, **fields):
        a = fields.pop("a")
        record = dict(kind=kind, a=list(a), **fields)
        self.records.append(record)
        return len(self.records) - 1

    def _python(self, fn):
        """A Python action between two stretches of records."""
        if len(self.records) > self._segment_start:
            self.segments.append(("c", self._segment_start, len(self.records)))
        self.segments.append(("py", fn))
        self._segment_start = len(self.records)

    def _close(self):
        if len(self.records) > self._segment_start or not self.segments:
            self.segments.append(("c", self._segment_start, len(self.records)))
        self._segment_start = len(self.records)

    # -- deciding what runs in C ----------------------------------------------------

    def _decide(self):
        """Per step: how it is lowered ("c", "alias", "fused_into", or None for
        Python), and the Activation layers fused into their producer."""
        plan = self.plan
        producer = {step.out: step for step in plan.steps}
        self.fused_activation = {}   # id(producer step) -> the Activation step fused into it
        self.mode = {}
        consumers = plan.consumers
        training = self.training
        for step in plan.steps:
            self.mode[id(step)] = self._lowerable(step)
        # An Activation right after a linear Dense/Conv whose output only it reads.
        for step in plan.steps:
            layer = step.runner
            if type(layer) is not Activation or self.mode[id(step)] is None and \
                    layer.activation.name != "softmax":
                continue
            source = producer.get(step.ins[0])
            if source is None or self.mode[id(source)] != "c" or consumers[step.ins[0]] != 1:
                continue
            src = source.runner
            if type(src) is Dense and src.activation.name == "linear" and \
                    (_fusable(layer.activation) or layer.activation.name == "softmax"):
                pass
            elif type(src) in (Conv1D, Conv2D) and src.activation.name == "linear" and \
                    layer.activation.fused:
                pass
            else:
                continue
            if layer.activation.name == "softmax" and training and \
                    not self._softmax_top(step):
                continue
            if training and layer.activation.name != "softmax" and \
                    step.out in plan.output_slots:
                continue   # its loss reads the logits the fused kernel would not keep
            self.fused_activation[id(source)] = step
            self.mode[id(step)] = "fused_into"
        # A softmax Dense is lowered in training only as the fused loss's top.
        for step in plan.steps:
            layer = step.runner
            if training and type(layer) is Dense and layer.activation.name == "softmax" and \
                    self.mode[id(step)] == "c" and not self._softmax_top(step):
                self.mode[id(step)] = None

    def _softmax_top(self, step):
        """Whether step's output is a model output whose loss is the fused
        softmax + categorical cross-entropy (computed by a C record)."""
        objective = self.objective
        if objective is None:
            return False
        for k, slot in enumerate(self.plan.output_slots):
            if slot == step.out and objective.fused[k] and \
                    type(objective.losses[k]) is CategoricalCrossentropy and \
                    not objective.losses[k].from_logits and \
                    self.target_kinds[k] in ("labels", "targets"):
                return True
        return False

    def _lowerable(self, step):
        """"c", "alias" or None (Python) for a step, from its layer alone."""
        layer = step.runner
        kind = type(layer)
        training = self.training
        if kind in (Flatten, Reshape):
            return "alias"
        if kind is Dropout:
            if not training or layer.rate == 0.0:
                return "alias"
            return "c" if isinstance(getattr(layer, "_rng", None), np.random.Generator) else None
        if kind is Dense:
            if not _regularizers_lowerable(layer):
                return None
            if _fusable(layer.activation) or layer.activation.name == "softmax":
                return "c"
            return None
        if kind in (Conv1D, Conv2D):
            if not _regularizers_lowerable(layer) or not layer.activation.fused:
                return None
            return "c"
        if kind in _POOLS:
            return "c"
        if kind is Activation:
            act = layer.activation
            if act.name == "softmax":
                return None
            return "c"
        if kind is Add:
            return "c"
        if kind is Concatenate:
            return "c" if layer._sample_axis(len(layer.output_shape)) == \
                len(layer.output_shape) - 1 else None
        return None

    # -- building ---------------------------------------------------------------------

    def _build(self):
        plan = self.plan
        self._decide()
        n = self.batch
        consumers_of = {s: [] for s in range(plan.n_slots)}
        for step in plan.steps:
            for i in step.ins:
                consumers_of[i].append(step)
        c_reads = set()
        for step in plan.steps:
            if self.mode[id(step)] in ("c", "alias", "fused_into"):
                c_reads.update(step.ins)
        # Model inputs: arrays given to each run.
        self._input_index = []
        for slot, t in zip(plan.input_slots, self.model._inputs):
            index = self._per_call(("input", (n,) + tuple(t.shape)))
            self.value_index[slot] = index
            self._input_index.append(index)
        # Targets: one per output when a record reads them.
        self._target_index = [None] * len(plan.output_slots)
        # ---- forward
        self._fixed_value = {}     # slot -> fixed array a Python producer copies into
        for step in plan.steps:
            mode = self.mode[id(step)]
            if mode == "c":
                self._lower_forward(step)
            elif mode == "alias":
                self._alias_forward(step)
            elif mode == "fused_into":
                src_slot = step.ins[0]
                self.value_index[step.out] = self.value_index[src_slot]
                self.values[step.out] = self.values[src_slot]
            else:
                self._python_forward(step, step.out in c_reads or any(
                    self.mode[id(c)] in ("c", "alias", "fused_into")
                    for c in consumers_of[step.out]))
        self._output_holders()
        if not self.training:
            self._close()
            return
        self._build_training()

    def _output_holders(self):
        """Per output, what a fused loss reads the logits from (see _Logits)."""
        producer = {step.out: step for step in self.plan.steps}
        holders = []
        for slot in self.plan.output_slots:
            step = producer.get(slot)
            if step is None:
                holders.append(None)
                continue
            source = step
            if self.mode[id(step)] == "fused_into":
                source = producer[step.ins[0]]
            if self.mode[id(source)] == "c":
                index = self._info.get(id(source), {}).get("logits")
                holders.append(_Logits(None if index is None else self.table[index]))
            else:
                holders.append(step.runner)
        self.output_holders = holders

    def _value(self, slot):
        index = self.value_index[slot]
        if index is None:
            raise AssertionError(f"slot {slot} has no C value")
        return index

    def _alias_forward(self, step):
        """Flatten, Reshape, an inference Dropout: the output is the input's memory."""
        slot = step.ins[0]
        index = self.value_index[slot]
        shape = (self.batch,) + tuple(step.runner.output_shape)
        if index is None:          # a Python value: the layer itself makes the view
            self._python_forward(step, False)
            return
        self.value_index[step.out] = self._view(index, shape)
        entry = self.table[self.value_index[step.out]]
        if isinstance(entry, np.ndarray):
            self.values[step.out] = entry
        else:
            self._input_views.append((step.out, slot, shape))

    def _python_forward(self, step, needs_fixed):
        """A node run by its layer (or call copy) in Python; its output copied
        into a fixed array when records read it."""
        values = self.values
        training = self.training
        fixed = None
        if needs_fixed:
            shape = (self.batch,) + tuple(step.runner.output_shape)
            fixed, index = self._new(shape)
            self.value_index[step.out] = index
            values[step.out] = fixed
            self._fixed_value[step.out] = fixed

        def run():
            out = step.forward(values, training)
            if fixed is not None:
                np.copyto(fixed, out)
            else:
                values[step.out] = out
        self._python(run)

    def _sig(self, layer):
        if id(layer) not in self._lowered_layers:
            self._lowered_layers[id(layer)] = layer
            self._watched.append(watch(layer, self.training))

    # -- forward records ------------------------------------------------------------

    def _lower_forward(self, step):
        layer = step.runner
        kind = type(layer)
        n = self.batch
        self._sig(layer)
        fused = self.fused_activation.get(id(step))
        activation = fused.runner.activation if fused is not None else \
            getattr(layer, "activation", None)
        ins = [self._value(i) for i in step.ins]
        out_shape = (n,) + tuple(layer.output_shape)
        if fused is not None:
            self._sig(fused.runner)
        info = self._info[id(step)] = {}
        if kind is Dense:
            w = layer.params["W"]
            b = layer.params.get("b") if layer.use_bias else None
            m, k = w.shape
            y, yi = self._new(out_shape)
            wi, bi = self._array(w), None if b is None else self._array(b)
            if activation.name == "softmax":
                logits, li = self._new(out_shape)
                self._emit("dense_softmax_fwd", a=[ins[0], wi, bi, li, yi], n=n, m=m, k=k)
                info.update(logits=li)
            else:
                self._emit("dense_fwd", a=[ins[0], wi, bi, yi], n=n, m=m, k=k,
                           act=activation.name, p0=activation.param)
            info.update(y=yi, w=wi, activation=activation, m=m, k=k)
            self._set_value(step.out, y, yi)
        elif kind in (Conv1D, Conv2D):
            self._conv_forward(step, layer, ins[0], activation, info)
        elif kind in _POOLS:
            self._pool_forward(step, layer, ins[0], info)
        elif kind is Activation:
            y, yi = self._new(out_shape)
            count = int(np.prod(out_shape, dtype=np.int64))
            self._emit("act_fwd", a=[ins[0], yi], n=count, act=activation.name,
                       p0=activation.param)
            info.update(y=yi, count=count)
            self._set_value(step.out, y, yi)
        elif kind is Dropout:
            y, yi = self._new(out_shape)
            mask, mi = self._new(out_shape)
            gi = self._generator(layer._rng)
            count = int(np.prod(out_shape, dtype=np.int64))
            scale = float(self.dtype.type(1.0 / (1.0 - layer.rate)))
            self._emit("dropout_fwd", a=[ins[0], yi, mi, gi], n=count, p0=layer.rate, p1=scale)
            info.update(mask=mi, count=count)
            self._set_value(step.out, y, yi)
        elif kind is Add:
            y, yi = self._new(out_shape)
            count = int(np.prod(out_shape, dtype=np.int64))
            self._emit("add", a=[ins[0], ins[1], yi], n=count)
            for extra in ins[2:]:
                self._emit("add", a=[yi, extra, yi], n=count)
            info.update(count=count)
            self._set_value(step.out, y, yi)
        elif kind is Concatenate:
            y, yi = self._new(out_shape)
            width = out_shape[-1]
            rows = int(np.prod(out_shape[:-1], dtype=np.int64))
            offset = 0
            widths = []
            for index, shape in zip(ins, layer.input_shape):
                self._emit("cols_in", a=[index, yi], n=rows, m=shape[-1], k=offset, s=width)
                widths.append((offset, shape[-1]))
                offset += shape[-1]
            info.update(rows=rows, width=width, widths=widths)
            self._set_value(step.out, y, yi)
        else:
            raise AssertionError(f"no C form for {kind.__name__}")

    def _set_value(self, slot, array, index):
        self.values[slot] = array
        self.value_index[slot] = index

    def _generator(self, rng):
        key = ("rng", id(rng))
        index = self._index.get(key)
        if index is None:
            index = self._index[key] = len(self.table)
            self.table.append(rng)
            self._keep.append(rng)
        return index

    def _workspace_view(self, count):
        """``count`` elements of the plan's workspace (grown first if needed),
        kept: the memory the layers' own calls would use."""
        workspace = self.plan.workspace
        view = workspace.take(count)
        self._keep.append(view)
        return view

    def _conv_geometry(self, layer):
        n = self.batch
        x_shape = (n,) + tuple(layer._in_shape3)
        w_shape = tuple(layer._kernel_shape4)
        return x_shape, w_shape, tuple(layer._stride2), tuple(layer._dilation2), \
            tuple(layer._pads)

    def _col_elements(self, x_shape, w_shape, stride, dilation, padding):
        """The im2col buffer the backend would take (cpu._col_elements)."""
        from .backend import cpu
        oh, ow = cpu.conv2d_output_hw(x_shape[1], x_shape[2], w_shape[:2], stride, dilation,
                                      padding)
        return cpu._col_elements(x_shape, w_shape, oh, ow, stride, padding), oh, ow

    def _conv_forward(self, step, layer, x_index, activation, info):
        n = self.batch
        x_shape, w_shape, stride, dilation, padding = self._conv_geometry(layer)
        col_size, oh, ow = self._col_elements(x_shape, w_shape, stride, dilation, padding)
        per_image = oh * ow * w_shape[0] * w_shape[1] * w_shape[2]
        chunk = col_size // per_image if col_size else 0
        out4 = (n, oh, ow, w_shape[3])
        y4, yi = self._new(out4)
        wi = self._array(layer.params["W"].reshape(w_shape))
        b = layer.params.get("b") if layer.use_bias else None
        bi = None if b is None else self._array(b)
        dz_size = int(np.prod(out4, dtype=np.int64))
        scratch = self._workspace_view(col_size + (dz_size if self.training else 0))
        ci = self._array(scratch[:col_size]) if col_size else None
        xi = self._view(x_index, x_shape)
        geometry = (x_shape, w_shape, stride, dilation, padding)
        self._emit("conv_fwd", a=[xi, wi, bi, ci, yi], conv=geometry, act=activation.name,
                   chunk=chunk)
        info.update(x=xi, w=wi, y=yi, col=ci, conv=geometry, chunk=chunk, out4=out4,
                    activation=activation, scratch=scratch, col_size=col_size)
        out_shape = (n,) + tuple(layer.output_shape)
        self._set_value(step.out, y4.reshape(out_shape), self._array(y4.reshape(out_shape)))

    def _pool_forward(self, step, layer, x_index, info):
        n = self.batch
        x_shape = (n,) + tuple(layer._in_shape3)
        out4 = (n,) + tuple(layer._out_shape3)
        xi = self._view(x_index, x_shape)
        y4, yi = self._new(out4)
        geometry = (x_shape, tuple(layer._pool2), tuple(layer._stride2), tuple(layer._pads))
        if layer.mode == "max":
            argmax, ai = self._new(out4, np.dtype(np.int32))
            self._emit("maxpool_fwd", a=[xi, yi, ai], pool=geometry)
            info.update(argmax=ai)
        else:
            self._emit("avgpool_fwd", a=[xi, yi], pool=geometry)
        info.update(pool=geometry, x_shape=x_shape, out4=out4)
        out_shape = (n,) + tuple(layer.output_shape)
        self._set_value(step.out, y4.reshape(out_shape), self._array(y4.reshape(out_shape)))

    # -- training: loss, backward, penalties, optimizer ------------------------------------

    def _build_training(self):
        plan = self.plan
        objective = self.objective
        n = self.batch
        producer = {step.out: step for step in plan.steps}
        # Contributions to each slot's gradient, in the order the node-by-node
        # backward adds them: ("fixed", index, array) or ("runtime", key).
        self._contrib = {s: [] for s in range(plan.n_slots)}
        self._runtime = {}
        outputs = plan.output_slots
        top_overlap = self._overlap_candidate()
        python_losses = []
        # ---- losses (their gradient is the first contribution to each output)
        for k, slot in enumerate(outputs):
            kind = self.target_kinds[k]
            step = producer.get(slot)
            source = self._logits_source(step)
            if source is not None:
                info = self._info[id(source)]
                classes = info["k"]
                ti = self._target_entry(k, kind, classes)
                seed, si = self._new((n, classes))
                a = [info["logits"], ti, None, si] if kind == "labels" else \
                    [info["logits"], None, ti, si]
                if top_overlap == k:
                    self._emit("overlap_gather", a=[], n=3)
                    # the top's forward record is the last one so far: move the
                    # overlap before it
                    overlap = self.records.pop()
                    self.records.insert(len(self.records) - 1, overlap)
                self._emit("softmax_xent", a=a, n=n, k=classes, m=k, p0=objective.weights[k])
                self._c_losses.append(k)
                self._contrib[slot].append(("fixed", si, seed, "logits"))
            else:
                python_losses.append(k)
                self._contrib[slot].append(("runtime", ("seed", k), None,
                                            "logits" if objective.fused[k] else "y"))
        if python_losses:
            self._python(self._python_loss_action(python_losses, producer))
        python_layers = [layer for layer in self.model.layers
                         if id(layer) not in self._lowered_layers and layer.regularized_params()]
        if python_layers:
            program_holder = self

            def penalties():
                for layer in python_layers:
                    program_holder.program.add_loss(layer.regularization_loss())
            self._python(penalties)
        # ---- backward
        schedule = plan.schedule((), "trainable")
        self._ran = set()
        self._penalized = set()
        for step, need in schedule:
            self._backward_step(step, need, producer)
        self._shared_sums()
        # Penalties of lowered layers whose backward did not run: value only.
        for layer in self._lowered_layers.values():
            if id(layer) not in self._penalized and layer.regularized_params() and \
                    layer in self.model.layers:
                self._penalty(layer, with_gradient=False)
        self._emit("check_loss", a=[])
        if self._clips:
            # Gradient clipping (clipnorm, clipvalue, global_clipnorm) needs
            # norms over whole tensors before any update: the optimizer's own
            # clip_gradients, in Python between the backward and the step.
            opt, holder = self.optimizer, self

            def clip():
                opt.clip_gradients([grad for _, _, grad in holder._items])
            self._python(clip)
        self._emit("optimizer", a=[])
        # ---- accuracy
        self._python_metrics = []
        for k, slot in enumerate(outputs):
            for i, fn in enumerate(self.metric_fns):
                index = self.value_index[slot]
                shape = (n,) + tuple(self.model._outputs[k].shape)
                if fn is metrics_module.accuracy and index is not None and len(shape) == 2 \
                        and shape[1] > 1 and self.target_kinds[k] in ("labels", "targets"):
                    ti = self._target_entry(k, self.target_kinds[k], shape[1])
                    a = [index, ti, None] if self.target_kinds[k] == "labels" else \
                        [index, None, ti]
                    self._emit("accuracy", a=a, n=n, k=shape[1], m=k)
                    self._c_accuracy.append((k, i))
                else:
                    self._python_metrics.append((k, i, fn))
        self._close()

    def _logits_source(self, step):
        """The lowered softmax Dense whose logits the fused C loss of ``step``'s
        output reads (``step`` itself, or the Dense an Activation("softmax")
        was fused into), or None when that loss is not a C record."""
        if step is None or not self._softmax_top(step):
            return None
        source = step
        if self.mode[id(step)] == "fused_into":
            source = next(s for s in self.plan.steps if s.out == step.ins[0])
            if step.runner.activation.name != "softmax":
                return None
        if self.mode[id(source)] != "c" or type(source.runner) is not Dense:
            return None
        info = self._info[id(source)]
        return source if "logits" in info else None

    def _overlap_candidate(self):
        """The output whose top layer's forward, loss and backward may run
        beside the next batch's gather (one output, its fused C loss, the
        last node, small enough for one thread), or None."""
        plan = self.plan
        if len(plan.output_slots) != 1 or not plan.steps:
            return None
        last = plan.steps[-1]
        if last.out != plan.output_slots[0] or self.mode[id(last)] != "c" or \
                type(last.runner) is not Dense or last.runner.activation.name != "softmax" or \
                not self._softmax_top(last) or plan.consumers[last.out] != 1:
            return None
        if self.batch * last.runner.units >= _LOSS_ROWS_PARALLEL_MIN:
            return None
        if any(layer.regularized_params() for layer in self.model.layers
               if id(layer) not in self._lowered_layers):
            return None       # a Python action would come between loss and backward
        if not self.records or self.records[-1]["kind"] != "dense_softmax_fwd":
            return None
        return 0

    def _target_entry(self, k, kind, classes):
        index = self._target_index[k]
        if index is None:
            n = self.batch
            spec = ("labels", n, classes) if kind == "labels" else \
                ("targets", (n,) + tuple(self.model._outputs[k].shape))
            index = self._target_index[k] = self._per_call(spec)
        return index

    def _python_loss_action(self, outputs, producer):
        objective = self.objective
        values = self.values
        runtime = self._runtime
        holder = self

        def run():
            targets = holder._targets
            for k in outputs:
                slot = holder.plan.output_slots[k]
                y = values[slot]
                loss = objective.losses[k]
                t = targets[k]
                if objective.fused[k]:
                    value, seed = loss.fused_value_and_grad(holder.output_holders[k], y, t,
                                                            holder.backend)
                else:
                    value, seed = loss.value_and_grad(t, y, holder.backend)
                value = float(value)
                w = objective.weights[k]
                if w != 1.0:
                    seed = seed * seed.dtype.type(w)
                holder.per_output_values[k] = value
                holder.program.add_loss(w * value)
                runtime[("seed", k)] = seed
                holder._deliver(("seed", k), seed)
        return run

    # -- gradients -----------------------------------------------------------------

    def _deliver(self, key, array):
        """A runtime contribution arrived: copy it where records will read it."""
        fixed = self._copy_to.get(key)
        if fixed is not None:
            np.copyto(fixed, array)

    def _grad_index(self, slot, shape):
        """The table index of slot's gradient for records, summing its
        contributions with add records (runtime ones are copied first)."""
        contributions = self._contrib[slot]
        indices = []
        for c in contributions:
            if c[0] == "fixed":
                indices.append(c[1])
            else:
                buf, index = self._new(shape)
                self._copy_to[c[1]] = buf
                indices.append(index)
        if not indices:
            zeros, index = self._new(shape)
            zeros.fill(0)
            return index
        if len(indices) == 1:
            return indices[0]
        acc, ai = self._new(shape)
        count = int(np.prod(shape, dtype=np.int64))
        self._emit("add", a=[indices[0], indices[1], ai], n=count)
        for extra in indices[2:]:
            self._emit("add", a=[ai, extra, ai], n=count)
        return ai

    def _grad_runtime(self, slot):
        """A function giving slot's gradient at run time for a Python node."""
        contributions = list(self._contrib[slot])
        runtime = self._runtime
        backend = self.backend
        shape = (self.batch,) + tuple(self._slot_shape(slot))
        acc = [None]
        zeros = [None]

        def value(c):
            return c[2] if c[0] == "fixed" else runtime[c[1]]

        def grad():
            if not contributions:
                if zeros[0] is None:
                    zeros[0] = np.zeros(shape, self.dtype)
                return zeros[0]
            first = value(contributions[0])
            if len(contributions) == 1:
                return first
            if acc[0] is None:
                acc[0] = aligned.empty(shape, self.dtype)
            backend.add(first, value(contributions[1]), acc[0])
            for c in contributions[2:]:
                backend.add(acc[0], value(c), acc[0])
            return acc[0]
        return grad

    def _slot_shape(self, slot):
        plan = self.plan
        if slot < len(plan.input_slots):
            return self.model._inputs[slot].shape
        step = next(s for s in plan.steps if s.out == slot)
        return tuple(step.runner.output_shape)

    def _add_contribution(self, slot, kind, ref, array=None):
        self._contrib[slot].append((kind, ref, array, "y"))

    def _backward_step(self, step, need, producer):
        mode = self.mode[id(step)]
        n = self.batch
        out_shape = (n,) + tuple(step.runner.output_shape)
        if mode == "fused_into":
            # The producer's records apply this activation's derivative: its
            # gradient is this node's output gradient.
            self._contrib[step.ins[0]] = self._contrib[step.out]
            return
        if mode == "alias":
            src = step.ins[0]
            if not need[0]:
                return
            dy_index = self._grad_index(step.out, out_shape)
            in_shape = (n,) + tuple(self._slot_shape(src))
            if step.runner.__class__ is Dropout or self.value_index[src] is not None:
                view = self._view(dy_index, in_shape)
                entry = self.table[view]
                self._add_contribution(src, "fixed", view,
                                       entry if isinstance(entry, np.ndarray) else None)
                return
        if mode in ("c", "alias") and self.value_index[step.ins[0]] is not None:
            self._lower_backward(step, need, out_shape)
            return
        self._python_backward(step, need)

    def _lower_backward(self, step, need, out_shape):
        layer = step.runner
        kind = type(layer)
        n = self.batch
        info = self._info[id(step)]
        dy_from_seed = None
        contributions = self._contrib[step.out]
        logits_seed = len(contributions) == 1 and contributions[0][3] == "logits"
        dy = self._grad_index(step.out, out_shape)
        ins = [self._value(i) for i in step.ins]
        self._ran.add(id(layer))
        if kind is Dense:
            m, k = info["m"], info["k"]
            dw = self._array(layer.grads["W"])
            db = self._array(layer.grads["b"]) if layer.use_bias else None
            dx = None
            if need[0]:
                dx_arr, dx = self._new((n, m))
            if logits_seed or info["activation"].name == "softmax":
                # from the logits: the fused loss's gradient (in place of dz)
                y = info.get("logits", info["y"])
                self._emit("dense_bwd", a=[ins[0], info["w"], y, dy, dy, dw, db, dx],
                           n=n, m=m, k=k, act="linear")
            else:
                dz_arr, dz = self._new((n, k))
                act = info["activation"]
                self._emit("dense_bwd", a=[ins[0], info["w"], info["y"], dy, dz, dw, db, dx],
                           n=n, m=m, k=k, act=act.name, p0=act.param)
            self._penalty(layer)
            if dx is not None:
                self._add_contribution(step.ins[0], "fixed", dx, dx_arr)
        elif kind in (Conv1D, Conv2D):
            self._conv_backward(step, layer, need, info, dy, logits_seed)
        elif kind in _POOLS:
            if not need[0]:
                return
            dx_arr, dx = self._new(info["x_shape"])
            dy4 = self._view(dy, info["out4"])
            if layer.mode == "max":
                self._emit("maxpool_bwd", a=[info["argmax"], dy4, dx], pool=info["pool"])
            else:
                self._emit("avgpool_bwd", a=[dy4, dx], pool=info["pool"])
            in_shape = (n,) + tuple(layer.input_shape)
            view = self._view(dx, in_shape)
            self._add_contribution(step.ins[0], "fixed", view, self.table[view])
        elif kind is Activation:
            if not need[0]:
                return
            act = layer.activation
            dx_arr, dx = self._new(out_shape)
            x = ins[0] if act.needs_input else None
            y = None if act.needs_input else self._value(step.out)
            self._emit("act_bwd", a=[x, y, dy, dx], n=info["count"], act=act.name,
                       p0=act.param)
            self._add_contribution(step.ins[0], "fixed", dx, dx_arr)
        elif kind is Dropout:
            if not need[0]:
                return
            dx_arr, dx = self._new(out_shape)
            self._emit("mul", a=[dy, info["mask"], dx], n=info["count"])
            self._add_contribution(step.ins[0], "fixed", dx, dx_arr)
        elif kind is Add:
            entry = self.table[dy]
            for slot, needed in zip(step.ins, need):
                if needed:
                    self._add_contribution(slot, "fixed", dy,
                                           entry if isinstance(entry, np.ndarray) else None)
        elif kind is Concatenate:
            for slot, needed, (offset, width) in zip(step.ins, need, info["widths"]):
                if not needed:
                    continue
                shape = (n,) + tuple(self._slot_shape(slot))
                dx_arr, dx = self._new(shape)
                self._emit("cols_out", a=[dy, dx], n=info["rows"], m=width, k=offset,
                           s=info["width"])
                self._add_contribution(slot, "fixed", dx, dx_arr)
        elif kind in (Flatten, Reshape):
            raise AssertionError("views have no records")
        else:
            raise AssertionError(f"no C backward for {kind.__name__}")

    def _conv_backward(self, step, layer, need, info, dy, logits_seed):
        n = self.batch
        out4 = info["out4"]
        x_shape = info["conv"][0]
        dy4 = self._view(dy, out4)
        scratch = info["scratch"]
        col_size = info["col_size"]
        dz_arr = scratch[col_size:col_size + int(np.prod(out4, dtype=np.int64))].reshape(out4)
        dz = self._array(dz_arr)
        dw = self._array(layer.grads["W"].reshape(info["conv"][1]))
        db = self._array(layer.grads["b"]) if layer.use_bias else None
        dx = None
        if need[0]:
            dx_arr, dx = self._new(x_shape)
        act = "linear" if logits_seed else info["activation"].name
        self._emit("conv_bwd", a=[info["x"], info["w"], info["y"], dy4, info["col"], dz, dw, db,
                                  dx], conv=info["conv"], act=act, chunk=info["chunk"])
        self._penalty(layer)
        if dx is not None:
            in_shape = (n,) + tuple(layer.input_shape)
            view = self._view(dx, in_shape)
            self._add_contribution(step.ins[0], "fixed", view, self.table[view])

    def _penalty(self, layer, with_gradient=True):
        """Penalty records of a lowered layer: value and gradient (after its backward)."""
        if id(layer) in self._penalized:
            return
        if layer not in self.model.layers:
            return            # a call copy: the layer's first call adds its penalty
        self._penalized.add(id(layer))
        for name, reg in layer.regularized_params():
            param = layer.params[name]
            grad = self._array(layer.grads[name]) if with_gradient else None
            self._emit("penalty", a=[self._array(param), grad], n=param.size, p0=reg.l1,
                       p1=reg.l2)

    def _python_backward(self, step, need):
        """A node whose backward runs in Python (the layer's own)."""
        grad = self._grad_runtime(step.out)
        runtime = self._runtime
        for slot, needed in zip(step.ins, need):
            if needed:
                key = ("dx", id(step), slot)
                self._add_contribution(slot, "runtime", key)
        contributions = self._contrib[step.out]
        from_logits = len(contributions) == 1 and contributions[0][3] == "logits"
        holder = self
        self._ran.add(id(step.runner))

        def run():
            dxs = step.backward(grad(), need, from_logits)
            for slot, dx, needed in zip(step.ins, dxs, need):
                if needed and dx is not None:
                    key = ("dx", id(step), slot)
                    runtime[key] = dx
                    holder._deliver(key, dx)
        self._python(run)

    def _shared_sums(self):
        """A shared layer's weight gradients: its calls' gradients added into
        the layer's own (after every backward, as plan.py does)."""
        for layer, copies, _ in self.plan._copies:
            runners = [r for r in [layer] + copies if id(r) in self._ran]
            if not runners:
                continue
            for name, grad in layer.grads.items():
                gi = self._array(grad)
                first = runners[0]
                count = grad.size
                if first is not layer:
                    self._emit("copy", a=[self._array(first.grads[name]), gi], n=count)
                for runner in runners[1:]:
                    self._emit("add", a=[gi, self._array(runner.grads[name]), gi], n=count)

    # -- validity -----------------------------------------------------------------------

    def still_valid(self):
        """False when the plan changed or any layer the program lowered did."""
        if not self.plan.still_valid() or self.version != self.plan.version:
            return False
        if self.training and self._trainable_key != self.plan._trainable_key():
            return False
        if self.optimizer is not None and self._clips != self.optimizer.clips_gradients:
            return False
        return self.layers_unchanged()

    def layers_unchanged(self):
        """True while every layer the program lowered is as it was then."""
        for watched in self._watched:
            if not unchanged(watched):
                return False
        return True

    # -- running ----------------------------------------------------------------------

    def _set_inputs(self, xs, targets=()):
        if self._target_outputs:
            arrays = list(xs)
            for k in self._target_outputs:
                arrays.append(targets[k])
        else:
            arrays = xs
        self.program.set_inputs(arrays)
        values = self.values
        for slot, x in zip(self.plan.input_slots, xs):
            values[slot] = x
        for slot, base, shape in self._input_views:
            values[slot] = values[base].reshape(shape)

    def _run_segments(self):
        program = self.program
        only = self._only
        if only is not None:            # the whole step in one call
            return program.run(only[1], only[2], True)
        last = self._last_c
        status, loss, bad = 0, 0.0, -1
        for i, segment in enumerate(self.segments):
            if segment[0] == "c":
                status, loss, bad = program.run(segment[1], segment[2], i == last)
                if status:
                    break
            else:
                segment[1]()
        return status, loss, bad

    def forward(self, xs):
        """The forward pass of an inference program: the list of outputs."""
        program = self.program
        if self._only is not None:          # one call
            program.forward(xs)
            return self._outputs
        program.reset()
        self._set_inputs(xs)
        self._run_segments()
        return [self.values[s] for s in self.plan.output_slots]

    def step(self, xs, targets, mode, next_batch=None, bounds=None):
        """One training step; returns (status, total loss, refused key or None,
        per-output losses, metric values per output). status: 0 applied, 1 the
        loss is not finite (nothing applied), 2 the optimizer refused (nothing
        written)."""
        program = self.program
        opt = self.optimizer
        self._targets = targets
        keys, params, grads, state0, state1 = opt._step_lists(self._items)
        backend = self.backend
        if self._only is not None:          # the whole step in one call
            if self._target_outputs:
                inputs = list(xs)
                for k in self._target_outputs:
                    inputs.append(targets[k])
            else:
                inputs = list(xs)
            status, total, bad, gathered = backend.program_step(
                program, inputs, opt.rule, params, grads, state0, state1, lr=opt.current_lr(),
                mode=mode, hyper=backend.program_hyperparameters(opt.rule,
                                                                 **opt.step_hyperparameters()),
                next_batch=next_batch, bounds=bounds)
            values = self.values
            for slot, x in zip(self.plan.input_slots, xs):
                values[slot] = x
        else:
            program.reset()
            self._set_inputs(xs, targets)
            backend.program_set_optimizer(program, opt.rule, params, grads, state0, state1,
                                          lr=opt.current_lr(), mode=mode, bounds=bounds,
                                          **opt.step_hyperparameters())
            if next_batch is not None:
                program.set_gather(next_batch)
            status, total, bad = self._run_segments()
        if next_batch is not None and not program.gathered:
            for data, index, out in (next_batch if isinstance(next_batch, list)
                                     else [next_batch]):
                self.backend.gather_rows(data, index, out)
        bad_key = None
        if status == 2:
            bad_key = keys[bad]
        elif status == 0:
            opt._finish_step(keys, -1, mode)
        losses = self.per_output_values
        for k in self._c_losses:
            losses[k] = float(program.losses[k])
        metric_values = [[0.0] * len(self.metric_fns) for _ in self.plan.output_slots]
        if status == 0:
            n = self.batch
            for k, i in self._c_accuracy:
                metric_values[k][i] = float(program.correct[k]) / n
            for k, i, fn in self._python_metrics:
                metric_values[k][i] = fn(targets[k], self.values[self.plan.output_slots[k]])
        return status, total, bad_key, list(losses), metric_values

    def prepare(self, items):
        """The optimizer's (key, param, grad) list and the trainable flags the
        program was made for."""
        self._items = items
        self._trainable_key = self.plan._trainable_key()
