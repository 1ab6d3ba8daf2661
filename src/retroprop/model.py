"""Models: a computational graph of layers, planned once and replayed.

* :class:`Model` (``rp.Model(inputs, outputs)``): any graph written with
  symbolic tensors (graph.py): several inputs and outputs, forks, shared
  layers, merges, the operators of :mod:`retroprop.ops`.
* :class:`Sequential`: a chain, each layer feeding the next; the same
  machinery, built from a list of layers.

A model runs through plans (plan.py): per batch size and mode, the order of
the nodes, their buffers and the backward schedule are worked out once.
Training (``Trainer``) runs a step program made from the plan (step.py).

Threads: ``predict`` (and ``Trainer.predict`` / ``evaluate``) may be called
from several threads at once on one model: each thread runs a private plan
of its own (call copies of the layers sharing the weights, its own buffers
and workspace), and waits while an optimizer step writes the weights. One
``fit`` at a time per model: a second, from another thread, raises
RuntimeError. The low-level ``forward``/``backward`` share one set of
buffers per model and are for one thread at a time.
"""
import threading

import numpy as np

from . import graph
from . import layers as layers_module
from .backend import get_backend, state_with_modules, state_without_modules
from .graph import InputLayer, Node, SymbolicTensor, format_shape
from .layers.base import Layer, default_name
from .plan import Plan
from .workspace import Workspace

_FLOAT_DTYPES = ("float32", "float64")
_PLANS_PER_MODE = 4


class TrainingLock:
    """Readers (inference on private plans) and one writer (a training step).

    Several readers run at once; a writer waits for them and excludes them,
    and new readers wait while a writer waits (a stream of predicts cannot
    starve a fit). The thread of a running
    ``fit`` is recorded in ``trainer_thread``: a second ``fit`` from another
    thread is refused, and inference from the fit's own thread (a callback)
    reads without waiting, its steps being done.
    """

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = None        # the thread writing, or None
        self._writers_waiting = 0
        self.trainer_thread = None

    def begin_fit(self, model_name):
        me = threading.get_ident()
        with self._cond:
            if self.trainer_thread is not None and self.trainer_thread != me:
                raise RuntimeError(
                    f"model {model_name!r} is already being trained by a fit in another thread; "
                    f"one fit at a time per model (train a copy: copy.deepcopy(model))")
            nested = self.trainer_thread == me
            self.trainer_thread = me
        return nested

    def end_fit(self, nested):
        if not nested:
            with self._cond:
                self.trainer_thread = None

    def acquire_write(self):
        """Wait until no thread reads or writes, then write; returns False (and
        does nothing) in the thread that is already writing."""
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                return False
            self._writers_waiting += 1
            try:
                while self._readers or self._writer is not None:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = me
        return True

    def release_write(self, acquired=True):
        if not acquired:
            return
        with self._cond:
            self._writer = None
            self._cond.notify_all()

    def acquire_read(self):
        """Wait while another thread writes, then read; returns False (and does
        nothing) in the thread that is writing (its own step reads)."""
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                return False
            while self._writer is not None or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        return True

    def release_read(self, acquired=True):
        if not acquired:
            return
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()


class Model:
    """A model given by its input and output symbolic tensors.

    Parameters
    ----------
    inputs : a symbolic tensor from ``rp.Input``, or a list of them
    outputs : a symbolic tensor computed from the inputs, or a list of them
    name : str, optional (default "model")
    dtype : "float32" or "float64", optional
        Default: the dtype given to the inputs, else float32.
    seed : int, optional
        Seeds the initialisation of the layers the model builds (and the
        Trainer's shuffling), in the order of the graph.
    backend : backend module or name, optional

    Every layer is built when the model is made; the graph is checked then
    (ValueError naming the layers and shapes): an input that leads to no
    output, an output not computed from the inputs, layers whose shapes do
    not fit. ``model(x)`` / ``predict`` take one array per input (a list,
    or a dict keyed by input name) and return one per output (a list when
    there are several).
    """

    def __init__(self, inputs, outputs, name=None, dtype=None, seed=None, backend=None):
        self._init_state(name if name is not None else "model", dtype, seed, backend)
        single_in = isinstance(inputs, SymbolicTensor)
        single_out = isinstance(outputs, SymbolicTensor)
        inputs = [inputs] if single_in else _tensor_list(inputs, "inputs")
        outputs = [outputs] if single_out else _tensor_list(outputs, "outputs")
        self._set_graph(inputs, outputs, single_in, single_out)

    # -- state shared by Model and Sequential ------------------------------------

    def _init_state(self, name, dtype, seed, backend):
        if not isinstance(name, str) or not name:
            raise ValueError(f"model name must be a non-empty string, got {name!r}")
        self._dtype_arg = None if dtype is None else _check_dtype(dtype)
        self.dtype = self._dtype_arg if self._dtype_arg is not None else np.dtype(np.float32)
        self.seed = seed
        self.name = name
        self.backend = backend if backend is not None and not isinstance(backend, str) \
            else get_backend(backend)
        self.layers = []
        self.built = False
        self._rng = np.random.default_rng(seed)
        # Scratch memory shared by all layers (im2col buffers): see workspace.py.
        self.workspace = Workspace(self.dtype)
        self._inputs, self._outputs, self._nodes = [], [], []
        self._single_input = self._single_output = True
        self.input_names, self.output_names = [], []
        self._version = 0          # bumped whenever the graph changes: plans are rebuilt
        self._plans = {}           # (batch, training) -> Plan
        self._last_plan = None     # the plan of the last forward (for backward)
        self._local = threading.local()   # per-thread private plans (predict)
        self._lock = TrainingLock()

    # copy.deepcopy and pickle: the backend module travels as its name; plans,
    # thread-local plans and the lock are not copied (a copy makes its own).
    def __getstate__(self):
        state = state_without_modules(self.__dict__, caches=("_plans",))
        state["_local"] = state["_lock"] = state["_last_plan"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state_with_modules(state))
        self._local = threading.local()
        self._lock = TrainingLock()

    # -- graph --------------------------------------------------------------------

    def _set_graph(self, inputs, outputs, single_in, single_out):
        owner = f"model {self.name!r}"
        for t in inputs:
            if not graph.is_input(t):
                raise ValueError(f"{owner}: every input must be a tensor made by rp.Input, got "
                                 f"{t!r}; a model starts at its inputs")
        if len({id(t) for t in inputs}) != len(inputs):
            raise ValueError(f"{owner}: the same input tensor is listed twice")
        if not inputs or not outputs:
            raise ValueError(f"{owner}: needs at least one input and one output")
        nodes = graph.collect(inputs, outputs, owner)
        dtypes = {t.dtype for t in inputs if t.dtype is not None}
        if len(dtypes) > 1:
            raise ValueError(f"{owner}: inputs of different dtypes: "
                             + ", ".join(f"{t.describe()} {t.dtype}" for t in inputs))
        if dtypes:
            input_dtype = dtypes.pop()
            if self._dtype_arg is not None and self._dtype_arg != input_dtype:
                raise ValueError(f"{owner}: dtype {self._dtype_arg} given, but the inputs are "
                                 f"{input_dtype}")
            self.dtype = input_dtype
            self.workspace = Workspace(self.dtype)
        layers = []
        seen = set()
        for node in nodes:
            if id(node.layer) not in seen:
                seen.add(id(node.layer))
                layers.append(node.layer)
        self._name_everything([t.node.layer for t in inputs], layers, owner)
        for node in nodes:
            self._build_node(node, owner)
        self._inputs, self._outputs, self._nodes = list(inputs), list(outputs), nodes
        self._single_input, self._single_output = single_in, single_out
        self.layers = layers
        self.input_names = [t.node.layer.name for t in inputs]
        self.output_names = _output_names(outputs)
        self.built = True
        self._graph_changed()

    def _name_everything(self, input_layers, layers, owner):
        """Unique names: given ones kept (a duplicate is an error), others
        "dense", "dense_1", ...; the inputs "input", "input_1", ..."""
        used = {}
        for obj in input_layers + layers:
            if obj.name is not None:
                if obj.name in used and used[obj.name] is not obj:
                    raise ValueError(f"{owner}: two layers named {obj.name!r}; layer and input "
                                     f"names must be unique in a model")
                used[obj.name] = obj
        for obj in input_layers + layers:
            if obj.name is None:
                base = "input" if isinstance(obj, InputLayer) else default_name(type(obj))
                name, i = base, 0
                while name in used:
                    i += 1
                    name = f"{base}_{i}"
                obj.name = name
                used[name] = obj

    def _build_node(self, node, owner):
        """Build the node's layer (once, at its first call) for the model's dtype."""
        layer = node.layer
        if layer.built:
            if layer.dtype != self.dtype:
                raise ValueError(f"{owner}: {layer._describe()} is built for {layer.dtype}, "
                                 f"the model computes in {self.dtype}")
        else:
            layer.build(node.input_shapes(), self.dtype, self._rng, backend=self.backend)
        if tuple(layer.output_shape) != node.output.shape:
            raise ValueError(f"{owner}: {layer._describe()} builds an output of shape "
                             f"{format_shape(layer.output_shape)}, but its call promised "
                             f"{format_shape(node.output.shape)}")
        layer.workspace = self.workspace

    def _graph_changed(self):
        self._version += 1
        self._plans = {}
        self._last_plan = None
        self._local = threading.local()

    @property
    def inputs(self):
        """The input symbolic tensors (a list)."""
        return list(self._inputs)

    @property
    def outputs(self):
        """The output symbolic tensors (a list)."""
        return list(self._outputs)

    @property
    def nodes(self):
        """Every call of a layer in the graph, in topological order."""
        return list(self._nodes)

    @property
    def input_shape(self):
        """Per-sample input shape (a list of them for several inputs); None until built."""
        if not self.built:
            return None
        shapes = [t.shape for t in self._inputs]
        return shapes[0] if self._single_input else shapes

    @property
    def output_shape(self):
        """Per-sample output shape (a list of them for several outputs); None until built."""
        if not self.built:
            return None
        shapes = [t.shape for t in self._outputs]
        return shapes[0] if self._single_output else shapes

    @property
    def is_chain(self):
        """True when the graph is a chain: one input, each layer feeding the next."""
        return (len(self._inputs) == 1 and len(self._outputs) == 1
                and all(not n.multi and len(n.inputs) == 1 for n in self._nodes)
                and all(n.inputs[0] is (self._nodes[i - 1].output if i else self._inputs[0])
                        for i, n in enumerate(self._nodes))
                and self._outputs[0] is (self._nodes[-1].output if self._nodes
                                         else self._inputs[0]))

    def __call__(self, inputs, training=False):
        """On symbolic tensors: the model used as a layer is not supported yet
        (TypeError); on arrays: :meth:`forward`."""
        if graph.is_symbolic(inputs):
            raise TypeError(f"model {self.name!r} cannot be called on symbolic tensors; build "
                            f"the larger graph from its layers instead")
        return self.forward(inputs, training=training)

    # -- inputs ----------------------------------------------------------------

    def _ensure_built(self, xs):
        """Build a model whose input shape is not known yet (Sequential) from data."""

    def prepare_inputs(self, x, argname="x"):
        """The arrays of ``x`` (one array for a one-input model; a list in input
        order, or a dict keyed by input name, for several) as C-contiguous
        arrays of the model's dtype, checked against the input shapes. Returns a
        list. Numeric arrays of another dtype are cast (copied)."""
        if isinstance(x, dict):
            arrays = self._arrays_from_dict(x, argname)
        elif len(self._inputs) == 1:
            # One input: an array, or a list holding just that array (else a
            # nested list of numbers is the data itself).
            one = isinstance(x, (list, tuple)) and len(x) == 1 and isinstance(x[0], np.ndarray)
            arrays = [x[0] if one else x]
        elif isinstance(x, (list, tuple)):
            arrays = list(x)
            if len(arrays) != len(self._inputs):
                raise ValueError(f"model {self.name!r} has {len(self._inputs)} inputs "
                                 f"({', '.join(self.input_names)}); {argname} holds "
                                 f"{len(arrays)} arrays")
        else:
            raise ValueError(f"model {self.name!r} has {len(self._inputs)} inputs "
                             f"({', '.join(self.input_names)}): pass {argname} as a list or a "
                             f"dict of arrays, got {type(x).__name__}")
        arrays = [_as_numeric(a, f"{argname}" if len(arrays) == 1 else
                              f"{argname}[{name!r}]", self.name)
                  for a, name in zip(arrays, self.input_names or ["x"])]
        self._ensure_built(arrays)
        out = []
        n = None
        for a, t, name in zip(arrays, self._inputs, self.input_names):
            if not (type(a) is np.ndarray and a.dtype is self.dtype and a.flags.c_contiguous):
                a = np.ascontiguousarray(a, dtype=self.dtype)
            self._check_input_shape(a, t, name, argname)
            if n is not None and a.shape[0] != n:
                raise ValueError(f"model {self.name!r}: the input arrays have different "
                                 f"numbers of samples: {dict(zip(self.input_names, [x.shape[0] for x in out + [a]]))}")
            n = a.shape[0]
            out.append(a)
        return out

    def _arrays_from_dict(self, x, argname):
        names = self.input_names
        missing = [n for n in names if n not in x]
        unknown = [k for k in x if k not in names]
        if missing or unknown:
            parts = []
            if missing:
                parts.append("no array for input " + ", ".join(
                    f"{n!r} {format_shape(t.shape)}" for n, t in zip(names, self._inputs)
                    if n in missing))
            if unknown:
                parts.append("unknown input name " + ", ".join(repr(k) for k in unknown))
            raise ValueError(f"model {self.name!r}: {argname}: " + "; ".join(parts)
                             + f" (the inputs are {', '.join(map(repr, names))})")
        return [x[n] for n in names]

    def _check_input_shape(self, a, tensor, name, argname):
        if a.shape[1:] == tensor.shape and a.ndim == len(tensor.shape) + 1 and a.shape[0] > 0:
            return
        if a.shape[0] == 0:
            raise ValueError(f"{argname} is an empty batch (shape {a.shape})")
        users = [n.layer._describe() for n in self._nodes
                 if any(i is tensor for i in n.inputs)]
        raise ValueError(f"model {self.name!r}: input {name!r} expects shape "
                         f"{format_shape(tensor.shape)}, got {a.shape}"
                         + (f" (read by {', '.join(users)})" if users else ""))

    def prepare_input(self, x, argname="x"):
        """:meth:`prepare_inputs` for a one-input model: the one array (a list for several)."""
        arrays = self.prepare_inputs(x, argname)
        return arrays[0] if len(arrays) == 1 else arrays

    def check_input(self, x):
        """Raise unless ``x`` (as prepare_inputs returns it, or one array) fits the inputs."""
        arrays = x if isinstance(x, list) else [x]
        for a, t, name in zip(arrays, self._inputs, self.input_names):
            self._check_input_shape(a, t, name, "x")

    # -- plans ------------------------------------------------------------------

    def _plan(self, batch, training):
        """The shared plan for (batch, training), made or remade as needed."""
        key = (batch, bool(training))
        plan = self._plans.get(key)
        if plan is not None and plan.still_valid():
            return plan
        same_mode = [k for k in self._plans if k[1] == key[1]]
        if len(same_mode) >= _PLANS_PER_MODE:       # batch sizes come and go
            for k in same_mode:
                del self._plans[k]
        plan = self._plans[key] = Plan(self, batch, training)
        return plan

    def reserve_workspace(self, batch_size, training=True):
        """Size the shared workspace for the largest need of any layer at this
        batch size (plans do it when they are made; the workspace only grows)."""
        self.workspace.reserve(max([0] + [layer.workspace_size(batch_size, training)
                                          for layer in self.layers]))

    def _private_plan(self, batch):
        """This thread's inference plan for ``batch`` (thread-safe predict)."""
        plans = getattr(self._local, "plans", None)
        if plans is None:
            plans = self._local.plans = {}
        plan = plans.get(batch)
        if plan is not None and plan.still_valid():
            return plan
        if len(plans) >= _PLANS_PER_MODE:
            plans.clear()
        plan = plans[batch] = Plan(self, batch, training=False, private=True)
        return plan

    # -- computation ------------------------------------------------------------

    def forward(self, x, training=False):
        """Output of the model for a batch x (the plan's reused buffers: copy
        what you keep). One array for one output, a list for several."""
        xs = self.prepare_inputs(x)
        plan = self._plan(xs[0].shape[0], training)
        outputs = plan.forward(xs)
        self._last_plan = plan
        return outputs[0] if self._single_output else outputs

    def _forward_arrays(self, xs, training=False):
        """forward of checked arrays (a list); returns the list of outputs."""
        plan = self._plan(xs[0].shape[0], training)
        self._last_plan = plan
        return plan.forward(xs)

    def backward(self, dy, input_grad=True, from_logits=False):
        """Backpropagate dL/dy_pred (a list for several outputs) through the last
        forward; fills every layer's grads. Returns dL/dx (a list for several
        inputs; None where not computed, or all None with ``input_grad=False``).

        ``from_logits``: dy is the gradient w.r.t. the last node's
        pre-activation (the fused softmax/sigmoid + loss gradient); a bool,
        or one per output."""
        plan = self._last_plan
        if not self.built:
            raise RuntimeError(f"model {self.name!r} is not built")
        if plan is None:
            raise RuntimeError(f"model {self.name!r}: backward called before forward")
        seeds = [dy] if self._single_output else list(dy)
        if len(seeds) != len(self._outputs):
            raise ValueError(f"model {self.name!r} has {len(self._outputs)} outputs, got "
                             f"{len(seeds)} gradients")
        for k, (seed, t) in enumerate(zip(seeds, self._outputs)):
            if seed is not None:
                self._check_output_grad(seed, t, plan.batch, k)
        flags = from_logits if isinstance(from_logits, (list, tuple)) else \
            [from_logits] * len(seeds)
        fused = [k for k, f in enumerate(flags) if f]
        for k in fused:
            self._check_from_logits(k)
        wanted = plan.input_slots if input_grad else ()
        grads = plan.backward(seeds, fused, wanted, "all")
        dxs = [grads[s] if input_grad else None for s in plan.input_slots]
        return dxs[0] if self._single_input else dxs

    def backward_from_logits(self, dz, input_grad=True):
        """Backpropagate dL/dz, z the last layer's pre-activation (fused softmax + loss)."""
        return self.backward(dz, input_grad=input_grad, from_logits=True)

    def _check_output_grad(self, dy, tensor, batch, k):
        expected = (batch,) + tensor.shape
        if not (type(dy) is np.ndarray and dy.dtype is self.dtype and dy.shape == expected):
            if not isinstance(dy, np.ndarray):
                raise TypeError(f"model {self.name!r}: the gradient of output {k} must be a "
                                f"numpy.ndarray, got {type(dy).__name__}")
            if dy.dtype != self.dtype:
                raise TypeError(f"model {self.name!r}: the gradient of output {k} must be "
                                f"{self.dtype}, got {dy.dtype}")
            if dy.shape != expected:
                raise ValueError(f"model {self.name!r}: the gradient of output {k} must have "
                                 f"shape {expected}, got {dy.shape}")

    def output_fusable(self, k):
        """The layer that computes output k when it can start backprop from its
        pre-activation (it has ``backward_from_logits`` and its output is used
        only as this model output), else None."""
        t = self._outputs[k]
        if graph.is_input(t):
            return None
        uses = sum(1 for n in self._nodes for i in n.inputs if i is t)
        uses += sum(1 for o in self._outputs if o is t)
        layer = t.node.layer
        if uses != 1 or not hasattr(layer, "backward_from_logits"):
            return None
        return layer

    def _check_from_logits(self, k):
        if self.output_fusable(k) is None:
            layer = self._outputs[k].node.layer
            raise TypeError(f"model {self.name!r}: output {k} ({type(layer).__name__} "
                            f"'{layer.display_name}') has no backward_from_logits, or is also "
                            f"used inside the model")

    def predict(self, x, batch_size=None):
        """Model output for x, computed in batches (default 1024) with training=False.

        Safe to call from several threads at once, and during a ``fit`` in
        another thread (it waits for the step in progress and sees the weights
        between two steps)."""
        if batch_size is None:
            batch_size = 1024
        _check_positive_int(batch_size, "batch_size")
        xs = self.prepare_inputs(x)
        return self._predict_arrays(xs, batch_size)

    def _predict_arrays(self, xs, batch_size):
        """predict of checked arrays: one array per output (a list for several)."""
        n = xs[0].shape[0]
        outs = None
        lock = self._lock
        acquired = lock.acquire_read()
        try:
            for start in range(0, n, batch_size):
                chunk = [x[start:start + batch_size] for x in xs]
                plan = self._private_plan(chunk[0].shape[0])
                ys = plan.forward(chunk)
                if outs is None:
                    outs = [np.empty((n,) + y.shape[1:], dtype=y.dtype) for y in ys]
                for out, y in zip(outs, ys):
                    out[start:start + y.shape[0]] = y
        finally:
            lock.release_read(acquired)
        return outs[0] if self._single_output else outs

    # -- parameters -------------------------------------------------------------

    def parameters(self):
        """Iterate over (layer, name, param, grad) of every layer (a shared layer once)."""
        for layer in self.layers:
            for name, param in layer.params.items():
                yield layer, name, param, layer.grads[name]

    def named_parameters(self, trainable_only=True):
        """Iterate over ("layer/name", param, grad): the optimizer's input."""
        for layer, name, param, grad in self.parameters():
            if not trainable_only or layer.is_param_trainable(name):
                yield f"{layer.name}/{name}", param, grad

    def states(self):
        """Iterate over (layer, name, array) of every non-trainable state array
        (e.g. BatchNormalization's moving statistics): saved with the weights,
        never updated by an optimizer."""
        for layer in self.layers:
            for name, arr in layer.state.items():
                yield layer, name, arr

    def regularization_loss(self):
        """Sum of all layers' weight penalties (a shared layer counted once)."""
        total = 0.0
        for layer in self.layers:
            total += layer.regularization_loss()
        return float(total)

    def count_params(self):
        """Total number of parameter scalars."""
        return int(sum(layer.count_params() for layer in self.layers))

    def get_weights(self):
        """Copies of all parameters, in ``parameters()`` order, followed by the
        non-trainable state arrays in ``states()`` order."""
        return [param.copy() for _, _, param, _ in self.parameters()] + \
            [arr.copy() for _, _, arr in self.states()]

    def set_weights(self, weights):
        """Copy ``weights`` (as from ``get_weights``) into the parameters and state,
        in place (so plans, step programs and optimizer state stay valid)."""
        params = [(layer, name, param) for layer, name, param, _ in self.parameters()]
        params += list(self.states())
        weights = list(weights)
        if len(weights) != len(params):
            raise ValueError(f"model {self.name!r} has {len(params)} weight arrays, "
                             f"got {len(weights)}")
        for (layer, name, param), w in zip(params, weights):
            w = np.asarray(w)
            if w.shape != param.shape:
                raise ValueError(f"{type(layer).__name__} '{layer.name}' {name} has shape "
                                 f"{param.shape}, got {w.shape}")
        acquired = self._lock.acquire_write()
        try:
            for (_, _, param), w in zip(params, weights):
                np.copyto(param, np.asarray(w), casting="same_kind")
        finally:
            self._lock.release_write(acquired)

    # -- description ------------------------------------------------------------

    def get_config(self):
        """JSON-serialisable description of the graph: the layers, each call
        of each layer (its inputs by name and call index), the inputs and the
        outputs."""
        call_index = {}
        tensor_ref = {}
        for t, name in zip(self._inputs, self.input_names):
            tensor_ref[id(t)] = [name, 0]
        layer_calls = {}
        for node in self._nodes:
            k = call_index.get(id(node.layer), 0)
            call_index[id(node.layer)] = k + 1
            tensor_ref[id(node.output)] = [node.layer.name, k]
            layer_calls.setdefault(id(node.layer), []).append(
                [tensor_ref[id(t)] for t in node.inputs] if node.multi
                else tensor_ref[id(node.inputs[0])])
        return {
            "class_name": "Model",
            "name": self.name,
            "dtype": self.dtype.name,
            "seed": self.seed,
            "inputs": [{"name": name, "shape": list(t.shape)}
                       for t, name in zip(self._inputs, self.input_names)],
            "layers": [dict(layer.serialize(), calls=layer_calls[id(layer)])
                       for layer in self.layers],
            "outputs": [tensor_ref[id(t)] for t in self._outputs],
            "single_input": self._single_input,
            "single_output": self._single_output,
        }

    @classmethod
    def from_config(cls, config, backend=None):
        """Rebuild an (untrained) model from :meth:`get_config` output (a Model's
        or a Sequential's)."""
        if config.get("class_name") != "Model":
            return Sequential.from_config(config, backend=backend)
        return _model_from_graph_config(config, backend)

    def save(self, path, optimizer=None, extra=None):
        """Save architecture and weights (and optionally optimizer state) to ``path`` (.rpz)."""
        from .io import save_model
        save_model(self, path, optimizer=optimizer, extra=extra)

    def summary(self, print_fn=print):
        """Print (via ``print_fn``, None to skip) and return a Keras-like table:
        one row per layer with its output shape, its parameter count and, for a
        graph that is not a chain, the tensors it is connected to."""
        if not self.built:
            raise ValueError(f"model {self.name!r} is not built; pass input_shape=... "
                             f"or call build() first")
        chain = self.is_chain
        rows_data = []       # (name cell, shape, params, connected)

        def names(layer, indent):
            yield f"{indent}{layer.name} ({type(layer).__name__})"
            for child in layer.sublayers():
                yield from names(child, indent + "  ")

        def add_layer(layer, indent, connected):
            rows_data.append((next(names(layer, indent)), _shape_text(layer.output_shape),
                              f"{layer.count_params():,}", connected))
            for child in layer.sublayers():
                add_layer(child, indent + "  ", "")

        if not chain:
            for t, name in zip(self._inputs, self.input_names):
                rows_data.append((f"{name} (InputLayer)", _shape_text(t.shape), "0", ""))
        sources = self._tensor_names()
        for layer in self.layers:
            connected = ""
            if not chain:
                calls = [n for n in self._nodes if n.layer is layer]
                connected = "; ".join(", ".join(sources[id(t)] for t in n.inputs) for n in calls)
            add_layer(layer, "", connected)
        longest = max(len(r[0]) for r in rows_data)
        widths = [max(33, longest + 2), 26, 12] + ([] if chain else [30])
        line = "_" * sum(widths)

        def row(cells):
            return "".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

        header = ("Layer (type)", "Output Shape", "Param #") + (() if chain else ("Connected to",))
        rows = [f'Model: "{self.name}"', line, row(header), "=" * sum(widths)]
        for i, r in enumerate(rows_data):
            rows.append(row(r[:3] if chain else r))
            if i < len(rows_data) - 1:
                rows.append("")
        total = self.count_params()
        trainable = sum(layer.count_trainable_params() for layer in self.layers)
        rows += ["=" * sum(widths),
                 f"Total params: {total:,}",
                 f"Trainable params: {trainable:,}",
                 f"Non-trainable params: {total - trainable:,}",
                 line]
        text = "\n".join(rows)
        if print_fn is not None:
            print_fn(text)
        return text

    def _tensor_names(self):
        """id(tensor) -> "layer" or "layer[k]" (k: which call of a shared layer)."""
        out = {id(t): name for t, name in zip(self._inputs, self.input_names)}
        counts = {}
        for node in self._nodes:
            counts[id(node.layer)] = counts.get(id(node.layer), 0) + 1
        seen = {}
        for node in self._nodes:
            k = seen.get(id(node.layer), 0)
            seen[id(node.layer)] = k + 1
            name = node.layer.name
            out[id(node.output)] = f"{name}[{k}]" if counts[id(node.layer)] > 1 else name
        return out

    def __repr__(self):
        return (f"<Model name={self.name!r} inputs={len(self._inputs)} "
                f"outputs={len(self._outputs)} layers={len(self.layers)}>")


class Sequential(Model):
    """A linear stack of layers.

    Parameters
    ----------
    layers : list of Layer, optional
    input_shape : tuple, optional
        Per-sample input shape (no batch dimension). When omitted the model
        is built on the first ``forward``/``fit`` from the data's shape.
    dtype : "float32" (default) or "float64" (for gradient checks).
        Input of another numeric dtype is cast (copied); non-numeric input
        raises TypeError.
    seed : int, optional
        Seeds the weight initialisation (and the Trainer's shuffling when
        ``fit`` gets no seed of its own).
    name : str, optional (default "sequential")
    backend : backend module or name, optional (default: ``get_backend()``)

    It is a :class:`Model` whose graph is a chain: Input -> layer 1 -> ... ->
    layer n.
    """

    def __init__(self, layers=None, input_shape=None, dtype="float32", seed=None,
                 name=None, backend=None):
        dtype_name = np.dtype(dtype).name if _is_dtype_like(dtype) else None
        if dtype_name not in _FLOAT_DTYPES:
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        self._init_state(name if name is not None else "sequential", dtype_name, seed, backend)
        self._input_shape_arg = None if input_shape is None else _as_shape(input_shape)
        for layer in layers or []:
            self.add(layer)

    # -- construction -----------------------------------------------------------

    def add(self, layer):
        """Append a layer, giving it a unique name ("dense", "dense_1", ...) if it has none."""
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add expects a Layer, got {type(layer).__name__}")
        if any(layer is other for other in self.layers):
            raise ValueError(f"layer {layer.display_name!r} is already in the model")
        used = {other.name for other in self.layers}
        if layer.name is None:
            base = default_name(type(layer))
            name, i = base, 0
            while name in used:
                i += 1
                name = f"{base}_{i}"
            layer.name = name
        elif layer.name in used:
            raise ValueError(f"duplicate layer name {layer.name!r} in model {self.name!r}")
        if layer.takes_list:
            raise TypeError(f"{layer._describe()} takes several inputs and cannot be part of a "
                            f"Sequential chain; use rp.Model with rp.Input")
        layer.workspace = self.workspace
        if self.built:
            layer.build(self.output_shape, self.dtype, self._rng, backend=self.backend)
            self.layers.append(layer)
            self._append_node(layer)
            return layer
        self.layers.append(layer)
        if self._input_shape_arg is not None:
            # The input shape is known: build as soon as there is a layer.
            try:
                self.build(self._input_shape_arg)
            except Exception:
                self.layers.pop()  # leave the model as it was
                raise
        return layer

    def build(self, input_shape=None):
        """Build every layer for per-sample ``input_shape`` (no batch dimension)."""
        if input_shape is None:
            input_shape = self._input_shape_arg
        if input_shape is None:
            raise ValueError(f"model {self.name!r} needs an input shape to be built; pass "
                             f"input_shape=... or call forward/fit with data")
        input_shape = _as_shape(input_shape)
        if self.built:
            if input_shape != self.input_shape:
                raise ValueError(f"model {self.name!r} is built for input shape "
                                 f"{self.input_shape}, got {input_shape}")
            return self.output_shape
        if not self.layers:
            raise ValueError(f"model {self.name!r} has no layers")
        shape = input_shape
        for layer in self.layers:
            shape = tuple(layer.build(shape, self.dtype, self._rng, backend=self.backend))
        source = InputLayer(input_shape, self.dtype, name="input")
        self._inputs = [source.output]
        self._nodes = []
        self._outputs = [source.output]
        self.input_names = ["input"]
        for layer in self.layers:
            self._append_node(layer, changed=False)
        self.built = True
        self._graph_changed()
        return shape

    def _append_node(self, layer, changed=True):
        """Chain a built layer after the current output."""
        previous = self._outputs[0]
        node = Node(layer, [previous], False, tuple(layer.output_shape), self.dtype)
        layer._first_call_shapes = tuple(layer.input_shape)
        self._nodes.append(node)
        self._outputs = [node.output]
        self.output_names = [layer.name]
        if changed:
            self._graph_changed()

    @property
    def output_shape(self):
        """Per-sample output shape of the last layer (None until built)."""
        if not self.built:
            return None
        return tuple(self.layers[-1].output_shape)

    @property
    def input_shape(self):
        """Per-sample input shape (None until built)."""
        if not self.built:
            return None
        return self._inputs[0].shape

    @property
    def is_chain(self):
        return True

    # -- computation ------------------------------------------------------------

    def _ensure_built(self, xs):
        if not self.built:
            x = xs[0]
            if x.ndim == 0:
                raise ValueError("x must have a batch dimension, got a scalar")
            self.build(self._input_shape_arg if self._input_shape_arg is not None
                       else x.shape[1:])

    def prepare_input(self, x, argname="x"):
        """Return x as a C-contiguous array of the model's dtype, building the model if needed.

        Numeric input of another dtype is cast (copied); non-numeric input raises
        TypeError; an empty batch or a scalar raises ValueError; a shape that does
        not fit the first layer raises its ValueError.
        """
        if type(x) is np.ndarray and x.dtype is self.dtype and self.built and x.ndim \
                and x.shape[0] and x.flags.c_contiguous and x.shape[1:] == self.input_shape:
            return x        # the common case (every batch of a fit), in a few cheap tests
        x = _as_numeric(x, argname, self.name)
        if not self.built:
            self._ensure_built([x])
        x = np.ascontiguousarray(x, dtype=self.dtype)
        self.layers[0].check_input(x)
        return x

    def prepare_inputs(self, x, argname="x"):
        return [self.prepare_input(x, argname)]

    def check_input(self, x):
        self.layers[0].check_input(x[0] if isinstance(x, list) else x)

    # -- description ------------------------------------------------------------

    def get_config(self):
        """JSON-serialisable description of the architecture."""
        return {
            "name": self.name,
            "dtype": self.dtype.name,
            "seed": self.seed,
            "input_shape": list(self.input_shape) if self.input_shape is not None else None,
            "layers": [layer.serialize() for layer in self.layers],
        }

    @classmethod
    def from_config(cls, config, backend=None):
        """Rebuild an (untrained) model from :meth:`get_config` output."""
        if config.get("class_name") == "Model":
            return _model_from_graph_config(config, backend)
        layers = [layers_module.deserialize(c) for c in config["layers"]]
        return cls(layers, input_shape=config.get("input_shape"),
                   dtype=config.get("dtype", "float32"),
                   seed=config.get("seed"), name=config.get("name"), backend=backend)

    def __repr__(self):
        return f"<Sequential name={self.name!r} layers={len(self.layers)} built={self.built}>"


def grad(output, wrt, inputs, training=False, dtype=None):
    """Reverse-mode automatic differentiation of any graph.

    Returns the gradient of ``output`` (a symbolic tensor; when it holds
    more than one number per sample, or the batch more than one sample, the
    gradient is that of the sum of all its entries) with respect to each
    entry of ``wrt``:

    * a symbolic tensor (an ``rp.Input`` or any tensor the output is computed
      from): an array of that tensor's batch shape;
    * a layer: a dict of its parameters' gradients (``{"W": ..., "b": ...}``);
    * a parameter array (an entry of ``layer.params``): an array of its shape.

    ``wrt`` is one of these or a list of them (the result is then a list).
    ``inputs`` holds the values of the inputs the output depends on: a dict
    keyed by the input tensors (or their names), or an array when there is
    one input. ``dtype`` is the precision of the computation (default: that
    of the graph's layers when some are built, else float64 unless every
    value is float32). Layers not yet built are built for
    it. Gradients where ``output`` does not depend on a tensor are zeros.

    Example (the course's first graph)::

        x, y, z = rp.Input(()), rp.Input(()), rp.Input(())
        f = (x + y) * z
        rp.grad(f, [x, y, z], {x: [-2.0], y: [5.0], z: [-4.0]})   # [-4.], [-4.], [3.]
    """
    if not isinstance(output, SymbolicTensor):
        raise TypeError(f"grad: output must be a symbolic tensor, got {type(output).__name__}")
    single = not isinstance(wrt, (list, tuple))
    targets = [wrt] if single else list(wrt)
    sources = _graph_inputs(output)
    feed = _feed_dict(inputs, sources)
    if dtype is None:
        built = {layer.dtype for layer in _upstream_layers(output) if layer.built}
        kinds = {np.asarray(v).dtype for v in feed.values()}
        dtype = built.pop() if len(built) == 1 else \
            "float32" if kinds == {np.dtype(np.float32)} else "float64"
    model = Model(sources, [output], name="grad", dtype=dtype)
    xs = model.prepare_inputs({t.node.layer.name: feed[id(t)] for t in sources}, "inputs")
    plan = model._plan(xs[0].shape[0], training)
    plan.forward(xs)
    wanted, params = [], "none"
    for target in targets:
        if isinstance(target, SymbolicTensor):
            if id(target) in plan.slot_of:
                wanted.append(plan.slot_of[id(target)])
        elif isinstance(target, (Layer, np.ndarray)):
            params = "all"
        else:
            raise TypeError(f"grad: wrt entries must be symbolic tensors, layers or parameter "
                            f"arrays, got {type(target).__name__}")
    seed = np.ones((plan.batch,) + output.shape, dtype=model.dtype)
    grads = plan.backward([seed], (), wanted, params)
    results = []
    for target in targets:
        if isinstance(target, SymbolicTensor):
            slot = plan.slot_of.get(id(target))
            g = None if slot is None else grads[slot]
            results.append(np.zeros((plan.batch,) + target.shape, model.dtype) if g is None
                           else np.array(g, copy=True))
        elif isinstance(target, Layer):
            if not any(layer is target for layer in _all_model_layers(model)):
                raise ValueError(f"grad: {target._describe()} is not part of the graph of the "
                                 f"output")
            results.append({name: g.copy() for name, g in target.grads.items()})
        else:
            found = [(layer, name) for layer in _all_model_layers(model)
                     for name, p in layer.params.items() if p is target]
            if not found:
                raise ValueError("grad: the array is not a parameter of a layer of the graph "
                                 "(pass layer.params[name] itself)")
            layer, name = found[0]
            results.append(layer.grads[name].copy())
    return results[0] if single else results


def _upstream_layers(output):
    layers, seen, stack = [], set(), [output]
    while stack:
        t = stack.pop()
        if graph.is_input(t) or id(t) in seen:
            continue
        seen.add(id(t))
        layers.append(t.node.layer)
        stack.extend(t.node.inputs)
    return layers


def _all_model_layers(model):
    out = []

    def walk(layer):
        out.append(layer)
        for child in layer.sublayers():
            walk(child)
    for layer in model.layers:
        walk(layer)
    return out


def _graph_inputs(output):
    """The rp.Input tensors ``output`` is computed from, in the order first met."""
    found, seen = [], set()
    stack = [output]
    visited = set()
    while stack:
        t = stack.pop()
        if id(t) in visited:
            continue
        visited.add(id(t))
        if graph.is_input(t):
            if id(t) not in seen:
                seen.add(id(t))
                found.append(t)
            continue
        stack.extend(reversed(t.node.inputs))
    return found


def _feed_dict(inputs, sources):
    """id(input tensor) -> values, from a dict (tensors or names as keys) or one array."""
    if not isinstance(inputs, dict):
        if len(sources) != 1:
            raise ValueError(f"grad: the output depends on {len(sources)} inputs ("
                             + ", ".join(t.node.layer.display_name for t in sources)
                             + "); pass their values as a dict")
        return {id(sources[0]): inputs}
    feed = {}
    by_name = {t.node.layer.name: t for t in sources if t.node.layer.name is not None}
    for key, value in inputs.items():
        if isinstance(key, SymbolicTensor):
            feed[id(key)] = value
        elif isinstance(key, str) and key in by_name:
            feed[id(by_name[key])] = value
        elif isinstance(key, str):
            raise ValueError(f"grad: unknown input name {key!r}")
    missing = [t for t in sources if id(t) not in feed]
    if missing:
        raise ValueError("grad: no value for input " + ", ".join(
            f"{t.node.layer.display_name} {format_shape(t.shape)}" for t in missing))
    return {id(t): np.asarray(feed[id(t)]) for t in sources}


def _model_from_graph_config(config, backend):
    """Model.from_config for a graph: the layers rebuilt, their calls replayed."""
    from . import ops  # noqa: F401  (registers the op layers for deserialize)
    tensors = {}
    inputs = []
    for spec in config["inputs"]:
        t = graph.Input(spec["shape"], dtype=config.get("dtype"), name=spec["name"])
        tensors[(spec["name"], 0)] = t
        inputs.append(t)
    pending = []
    for layer_config in config["layers"]:
        calls = layer_config.get("calls")
        if not isinstance(calls, list) or not calls:
            raise ValueError(f"layer config {layer_config.get('class_name')!r} has no calls")
        layer = layers_module.deserialize({k: v for k, v in layer_config.items() if k != "calls"})
        pending.append((layer, calls))
    # Replay the calls in an order where every input already exists.
    progress = True
    while pending and progress:
        progress = False
        remaining = []
        for layer, calls in pending:
            done = len([k for k in tensors if k[0] == layer.name])
            while done < len(calls):
                refs = calls[done]
                multi = bool(refs) and isinstance(refs[0], list)
                keys = [tuple(r) for r in refs] if multi else [tuple(refs)]
                if not all(k in tensors for k in keys):
                    break
                args = [tensors[k] for k in keys]
                tensors[(layer.name, done)] = layer(args if multi else args[0])
                done += 1
                progress = True
            if done < len(calls):
                remaining.append((layer, calls))
        pending = remaining
    if pending:
        raise ValueError("graph config: calls refer to tensors that are never computed: "
                         + ", ".join(layer.name for layer, _ in pending))
    outputs = [tensors[tuple(ref)] for ref in config["outputs"]]
    single_in = config.get("single_input", len(inputs) == 1)
    single_out = config.get("single_output", len(outputs) == 1)
    return Model(inputs[0] if single_in else inputs, outputs[0] if single_out else outputs,
                 name=config.get("name"), dtype=config.get("dtype"), seed=config.get("seed"),
                 backend=backend)


def _tensor_list(values, what):
    try:
        values = list(values)
    except TypeError:
        raise TypeError(f"{what} must be a symbolic tensor or a list of them, got "
                        f"{type(values).__name__}") from None
    for v in values:
        if not isinstance(v, SymbolicTensor):
            raise TypeError(f"{what} must be symbolic tensors (from rp.Input and layer calls), "
                            f"got {type(v).__name__}")
    return values


def _output_names(outputs):
    names, used = [], {}
    for t in outputs:
        base = t.node.layer.name
        count = used.get(base, 0)
        used[base] = count + 1
        names.append(base if count == 0 else f"{base}_{count}")
    return names


def _shape_text(shape):
    return "(None, " + ", ".join(str(s) for s in shape) + ")" if shape else "(None,)"


def _as_numeric(x, argname, model_name):
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{argname} must be a numeric array: {exc}") from None
    if x.dtype.kind not in "biuf":
        raise TypeError(f"model {model_name!r} expects numeric input {argname}, "
                        f"got dtype {x.dtype}")
    if x.ndim == 0:
        raise ValueError(f"{argname} must have a batch dimension, got a scalar")
    if x.shape[0] == 0:
        raise ValueError(f"{argname} is an empty batch (shape {x.shape})")
    return x


def _check_dtype(dtype):
    dtype_name = np.dtype(dtype).name if _is_dtype_like(dtype) else None
    if dtype_name not in _FLOAT_DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return np.dtype(dtype_name)


def _is_dtype_like(dtype):
    if dtype is None:  # np.dtype(None) would silently mean float64
        return False
    try:
        np.dtype(dtype)
        return True
    except TypeError:
        return False


def _as_shape(shape):
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"input_shape must be a tuple of positive ints, got {shape!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be a tuple of positive ints, got {shape!r}")
    return shape


def _check_positive_int(value, argname):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{argname} must be a positive integer, got {value!r}")
    return int(value)
