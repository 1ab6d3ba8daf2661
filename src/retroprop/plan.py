"""The planned executor: a model's graph made ready to run, once, then replayed.

A :class:`Plan` is a model at one batch size in one mode (training or
inference). Making it does everything that does not change from one batch
to the next:

* the order: the model's nodes in topological order (graph.collect), each
  reading its inputs from numbered *slots* and writing its output to one;
* who runs each node: the layer itself, or, for the second and later calls
  of a shared layer, a *call copy* (:func:`call_copy`) that shares the
  layer's weights but keeps its own buffers, caches and gradients, so each
  call can be differentiated; a *private* plan (thread-safe inference, see
  Model.predict) runs copies of every layer, with a workspace of its own;
* the scratch memory: the model's workspace is sized once for the largest
  need of any node at this batch size;
* the backward schedules (:meth:`Plan.schedule`): which nodes run backward
  and which input gradients each computes, worked out once per request.

A gradient is computed only where it is needed: a node computes the
gradient of an input only when a trainable parameter, or a tensor whose
gradient the caller asked for (an input for ``rp.grad`` or ``gradcheck``),
lies upstream of that input. In a model that starts with ``Flatten``,
``Dropout`` or an augmentation layer, the first weighted layer computes no
dx at all. Where a value feeds several nodes (a fork), their gradients are
summed into a buffer of the plan; a shared layer's weight gradients are the
sum over its calls.

Replaying a step (:meth:`Plan.forward`, :meth:`Plan.backward`) only calls
the nodes in order; nothing is re-derived. The C backend goes further: the
Trainer lowers a training step to a step program (step.py) that runs every
node it knows in C, in one call per stretch of such nodes.

When a plan is rebuilt (Model._plan): a change of the model's structure
(``Sequential.add``), a new batch size (a plan per size is kept, up to four
per mode), a shared layer whose attributes changed (its call copies would be
stale). A layer made non-trainable changes only the backward schedule,
which is looked up again. ``set_weights`` copies into the existing arrays
and changes nothing here; an array *replaced* in ``layer.params`` is read
afresh by the layer itself (a step program, which keeps pointers, checks
its arrays every step and is rebuilt).
"""
import copy

import numpy as np

from . import aligned
from .layers.base import BufferCache
from .workspace import Workspace


def _no_regularization():
    """A call copy adds no penalty gradient: the layer's first call does, once."""


def call_copy(layer, workspace):
    """A copy of ``layer`` for another call of it: the same parameter and state
    arrays and random generator, its own buffers, caches and gradient arrays,
    ``workspace`` as scratch memory, and no regularization gradient. (A layer
    holding something that cannot be deep-copied gets a shallow copy with its
    own buffer caches and gradients; its other attributes are then shared.)"""
    memo = {}

    def share(obj):
        for arr in list(obj.params.values()) + list(obj.state.values()):
            memo[id(arr)] = arr
        for value in vars(obj).values():
            if isinstance(value, np.random.Generator):
                memo[id(value)] = value
            elif isinstance(value, Workspace):
                memo[id(value)] = workspace
            elif isinstance(value, BufferCache):
                memo[id(value)] = BufferCache()
        for child in obj.sublayers():
            share(child)
    share(layer)
    try:
        clone = copy.deepcopy(layer, memo)
    except (TypeError, copy.Error):
        # An attribute that cannot be copied (a lock, an open file): a
        # shallow copy, with its own buffer caches and gradient arrays.
        clone = copy.copy(layer)
        for key, value in vars(layer).items():
            if isinstance(value, BufferCache):
                setattr(clone, key, BufferCache())
        clone.grads = {name: np.zeros_like(g) for name, g in layer.grads.items()}
    clone.add_regularization_gradients = _no_regularization
    clone.workspace = workspace
    return clone


def _signature(layer):
    """What a call copy copied from its layer: compared before each use, so
    that a changed layer gets fresh copies."""
    activation = getattr(layer, "activation", None)
    return (tuple((k, id(v)) for k, v in vars(layer).items() if not k.startswith("_")),
            tuple(id(a) for a in layer.params.values()),
            tuple(id(a) for a in layer.state.values()),
            getattr(activation, "param", None))


def _all_layers(layers):
    out = []
    for layer in layers:
        out.append(layer)
        out.extend(_all_layers(layer.sublayers()))
    return out


class Step:
    """One node of the plan: ``runner`` (the layer or a call copy) applied to slots."""

    __slots__ = ("node", "layer", "runner", "ins", "out", "multi")

    def __init__(self, node, runner, ins, out):
        self.node = node
        self.layer = node.layer
        self.runner = runner
        self.ins = ins
        self.out = out
        self.multi = node.multi

    def forward(self, values, training):
        if self.multi:
            return self.runner.forward([values[i] for i in self.ins], training=training)
        return self.runner.forward(values[self.ins[0]], training=training)

    def backward(self, dy, need, from_logits):
        """The input gradients (a list, None where not needed); writes the runner's grads."""
        arg = need if self.multi else need[0]
        if from_logits:
            dx = self.runner.backward_from_logits(dy, need_dx=arg)
        else:
            dx = self.runner.backward(dy, need_dx=arg)
        return list(dx) if self.multi else [dx]

    def has_params(self, mode):
        params = self.runner.params
        if mode == "none" or not params:
            return False
        if mode == "all":
            return True
        return any(self.layer.is_param_trainable(name) for name in params)


class Plan:
    """A model's graph at one batch size and mode, ready to replay.

    ``private=True`` makes a plan whose every node runs on a call copy with
    a workspace of its own: one per thread gives thread-safe inference.
    """

    def __init__(self, model, batch, training, private=False):
        self.model = model
        self.batch = int(batch)
        self.training = bool(training)
        self.private = bool(private)
        self.backend = model.backend
        self.dtype = model.dtype
        self.version = model._version
        self.workspace = Workspace(model.dtype) if private else model.workspace
        slot_of = {id(t): i for i, t in enumerate(model._inputs)}
        self.input_slots = list(range(len(model._inputs)))
        self.steps = []
        first_runner = {}
        self._copies = []          # (layer, [call copies], signature)
        copies_of = {}
        for node in model._nodes:
            layer = node.layer
            if id(layer) in first_runner or private:
                runner = call_copy(layer, self.workspace)
                copies_of.setdefault(id(layer), (layer, []))[1].append(runner)
            else:
                runner = layer
            first_runner.setdefault(id(layer), runner)
            out = len(slot_of)
            self.steps.append(Step(node, runner, [slot_of[id(t)] for t in node.inputs], out))
            slot_of[id(node.output)] = out
        self._copies = [(layer, runners, _signature(layer)) for layer, runners in copies_of.values()]
        self.slot_of = slot_of          # id(symbolic tensor) -> slot
        self.n_slots = len(slot_of)
        self.output_slots = [slot_of[id(t)] for t in model._outputs]
        self.consumers = [0] * self.n_slots
        for step in self.steps:
            for i in step.ins:
                self.consumers[i] += 1
        for s in self.output_slots:
            self.consumers[s] += 1
        self.values = [None] * self.n_slots
        self._program = None        # the C form of an inference plan (step.py), or False
        self._last_inputs = None    # the inputs of a forward run by the program
        self._grads = [None] * self.n_slots
        self._accumulators = [None] * self.n_slots
        self._zeros = {}
        self._schedules = {}
        self._all_layers = _all_layers(model.layers)
        self.workspace.reserve(max([0] + [step.runner.workspace_size(self.batch, self.training)
                                          for step in self.steps]))

    def output_runners(self):
        """What computed each output in the last forward, for the fused losses,
        which read its ``logits``: the layer (or call copy), the C program's
        stand-in holding its logits buffer, or None for an output that is a
        model input."""
        if self._last_inputs is not None:
            return self._program.output_holders
        by_slot = {step.out: step.runner for step in self.steps}
        return [by_slot.get(s) for s in self.output_slots]

    # -- validity ---------------------------------------------------------------

    def still_valid(self):
        """False when the model's structure changed or a layer with call
        copies changed since the plan was made."""
        if self.version != self.model._version:
            return False
        for layer, _, signature in self._copies:
            if _signature(layer) != signature:
                return False
        return True

    # -- forward ----------------------------------------------------------------

    def forward(self, xs):
        """Run every node on the input arrays ``xs`` (one per model input, checked
        by the model); returns the list of output arrays (buffers reused by the
        next call). An inference plan runs as a C program (step.py) when the
        backend has them and some node has a C form."""
        if not self.training:
            program = self._program
            # (the model checked this plan's validity just now: only the
            # layers the program lowered remain to be checked)
            if not program or not program.layers_unchanged():
                program = self._inference_program()
            if program is not None:
                self._last_inputs = xs
                return program.forward(xs)
        self._last_inputs = None
        return self._forward_nodes(xs)

    def _inference_program(self):
        program = self._program
        if program is False:
            return None
        if program is None or not program.still_valid():
            from . import step
            program = False
            if step.supported(self.backend):
                made = step.StepProgram(self)
                if made.n_records:
                    program = made
            self._program = program
        return program or None

    def _forward_nodes(self, xs):
        """The forward pass node by node (each layer's own forward)."""
        values = self.values
        for slot, x in zip(self.input_slots, xs):
            values[slot] = x
        training = self.training
        for step in self.steps:
            values[step.out] = step.forward(values, training)
        return [values[s] for s in self.output_slots]

    # -- backward ---------------------------------------------------------------

    def _trainable_key(self):
        return tuple(layer.trainable for layer in self._all_layers)

    def schedule(self, wanted=(), params="trainable"):
        """The backward pass for gradients of the slots ``wanted`` and of the
        parameters (``params``: "trainable", "all" or "none"): the steps to run,
        last node first, each with the input gradients it must compute."""
        key = (tuple(sorted(set(wanted))), params, self._trainable_key())
        schedule = self._schedules.get(key)
        if schedule is not None:
            return schedule
        needs = [False] * self.n_slots
        for s in wanted:
            needs[s] = True
        runs = []
        for step in self.steps:
            if step.has_params(params) or any(needs[i] for i in step.ins):
                needs[step.out] = True
                runs.append((step, [needs[i] for i in step.ins]))
        schedule = list(reversed(runs))
        if len(self._schedules) > 16:
            self._schedules.clear()
        self._schedules[key] = schedule
        return schedule

    def _add_gradient(self, slot, grad):
        """Sum ``grad`` into the gradient of ``slot`` (a fork's gradients add up)."""
        grads = self._grads
        current = grads[slot]
        if current is None:
            grads[slot] = grad
            return
        acc = self._accumulators[slot]
        if acc is None:
            acc = self._accumulators[slot] = aligned.empty(grad.shape, self.dtype)
        if current is acc:
            self.backend.add(acc, grad, acc)
        else:
            self.backend.add(current, grad, acc)
            grads[slot] = acc

    def _zeros_for(self, slot):
        z = self._zeros.get(slot)
        if z is None:
            shape = (self.batch,) + tuple(self.values[slot].shape[1:])
            z = self._zeros[slot] = np.zeros(shape, self.dtype)
        return z

    def backward(self, seeds, from_logits=(), wanted=(), params="trainable"):
        """Backpropagate the output gradients ``seeds`` (one per output, None for
        none; for an output index in ``from_logits``, the gradient w.r.t. its
        node's pre-activation, fused with the loss); returns the list of slot
        gradients (None where not computed). Writes every layer's ``grads``."""
        if self._last_inputs is not None:
            # The forward ran in C: the layers keep nothing for backward yet.
            self._forward_nodes(self._last_inputs)
            self._last_inputs = None
        grads = self._grads
        for i in range(self.n_slots):
            grads[i] = None
        for k, seed in enumerate(seeds):
            if seed is not None:
                self._add_gradient(self.output_slots[k], seed)
        logit_slots = {self.output_slots[k] for k in from_logits}
        ran = set()
        for step, need in self.schedule(wanted, params):
            dy = grads[step.out]
            if dy is None:
                dy = self._zeros_for(step.out)
            dxs = step.backward(dy, need, step.out in logit_slots)
            ran.add(id(step.runner))
            for slot, dx, needed in zip(step.ins, dxs, need):
                if needed and dx is not None:
                    self._add_gradient(slot, dx)
        if self._copies and params != "none":
            self._sum_shared_gradients(ran)
        return grads

    def _sum_shared_gradients(self, ran):
        """A shared layer's weight gradients: the sum over its calls."""
        for layer, copies, _ in self._copies:
            runners = [r for r in [layer] + copies if id(r) in ran]
            if not runners:
                continue
            for name, grad in layer.grads.items():
                if runners[0] is not layer:
                    np.copyto(grad, runners[0].grads[name])
                for runner in runners[1:]:
                    self.backend.add(grad, runner.grads[name], grad)
