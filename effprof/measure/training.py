"""One training step of any component: forward, loss, backward, optimizer step, zeroing the gradients.

`TrainingStep(built, TrainOptions(...))` turns a `Built` into a zero-argument-per-inputs training step:

- forward: `built.call(inputs)`;
- loss: `built.loss(output, inputs)` when the component declares one (e.g. CLIP's contrastive loss),
  otherwise `default_loss(output)` = the mean of the output's first tensor, in float32. A mean is a
  stand-in objective: it costs one reduction and sends a gradient of 1/numel to every output element,
  so the backward pass does the same work as with a real loss of the same output;
- backward: `loss.backward()`;
- optimizer step: `torch.optim.AdamW` (default; two states per trainable parameter, `exp_avg` and
  `exp_avg_sq`, in the parameter's dtype, plus a 0-d `step` counter per parameter tensor) or
  `torch.optim.SGD` with momentum 0.9 (one `momentum_buffer` per parameter);
- `optimizer.zero_grad(set_to_none=True)`: the gradients are freed between steps, as in PyTorch's default.

Only parameters with `requires_grad` (the ones the component marks trainable) get gradients and optimizer
state; a frozen base stays bit-identical.

`memory_split(step, inputs)` measures, on the first step of a fresh optimizer, what each part holds:

- weights: sizes of the module's parameters and buffers;
- activations: CUDA: memory allocated by the forward and held until backward (the allocator's
  `memory_allocated` after the loss minus before the forward: tensors saved for backward, output, loss);
  everywhere: `saved_activations`, the bytes of the distinct tensors autograd saves for backward
  (through `torch.autograd.graph.saved_tensors_hooks`), parameters and inputs excluded;
- gradients: CUDA: allocated after backward (output and loss released) minus before the forward;
  CPU: sizes of the live `.grad` tensors;
- optimizer state: CUDA: allocated after the first `optimizer.step()` minus before it; CPU: sizes of
  the tensors in `optimizer.state`;
- peak (CUDA only): `max_memory_allocated` over a second, steady-state step, everything included.

On CPU torch keeps no allocator statistics, so the CPU figures are sizes of live tensors (`method` says
which). FLOPs of forward + backward come from one pass under FlopCounterMode (2 × MAC; the optimizer's
elementwise updates have no formula and count zero).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from effprof.core.errors import UsageError
from effprof.measure.flops import count_flops

OPTIMIZERS = ("adamw", "sgd")
MIB = 2**20


@dataclass(frozen=True)
class TrainOptions:
    """How a training step is made. `lr` in the optimizer's units; `capturable` for CUDA-graph capture."""

    optimizer: str = "adamw"
    lr: float = 1e-4
    grad_checkpointing: bool = False
    capturable: bool = False

    def validate(self) -> "TrainOptions":
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"--optimizer: {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if not self.lr > 0:
            raise UsageError(f"--lr: {self.lr} must be positive")
        return self


def first_tensor(output: Any) -> torch.Tensor:
    """The first tensor of an output: a tensor, a tuple/list, a dict or a transformers ModelOutput."""
    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else None
    if values is None and hasattr(output, "to_tuple"):
        values = output.to_tuple()
    for value in values or ():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value
    raise UsageError(f"--train: cannot take a loss of an output of type {type(output).__name__}")


def default_loss(output: Any) -> torch.Tensor:
    """The mean of the output's first floating-point tensor, in float32."""
    return first_tensor(output).float().mean()


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Parameters with requires_grad, each once (shared tensors counted once)."""
    seen: dict[int, nn.Parameter] = {}
    for p in module.parameters():
        if p.requires_grad:
            seen.setdefault(id(p), p)
    return list(seen.values())


def param_counts(module: nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameter counts; shared tensors counted once."""
    seen = {id(p): p for p in module.parameters()}
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return trainable, sum(p.numel() for p in seen.values()) - trainable


def make_optimizer(params: list[nn.Parameter], options: TrainOptions) -> torch.optim.Optimizer:
    if options.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=options.lr, capturable=options.capturable)
    return torch.optim.SGD(params, lr=options.lr, momentum=0.9)


def enable_grad_checkpointing(module: nn.Module, name: str) -> None:
    """Turn on activation checkpointing in every transformers model inside `module` (non-reentrant)."""
    models = [m for m in module.modules() if hasattr(m, "gradient_checkpointing_enable")
              and getattr(m, "supports_gradient_checkpointing", False)]
    if not models:
        raise UsageError(f"--grad-checkpointing: {name} has no module that supports it (transformers models do)")
    for m in models:  # transformers >= 5.2x names it activation_checkpointing_enable; older ones gradient_...
        if hasattr(m, "activation_checkpointing_enable"):
            m.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


class TrainingStep:
    """A training step of `built`: `step(inputs)` runs forward, loss, backward, optimizer step, zero_grad and
    returns the detached loss. `module` replaces `built.module` in the forward (e.g. its compiled version)."""

    def __init__(self, built, options: TrainOptions = TrainOptions(), module: nn.Module | None = None,
                 name: str = "component"):
        from effprof.ops.autograd import ensure_registered

        ensure_registered()  # custom ops (selective scan, causal conv) backpropagate through their references
        self.built = built
        self.options = options.validate()
        self.module = built.module if module is None else module
        built.module.train()
        if options.grad_checkpointing:
            enable_grad_checkpointing(built.module, name)
        self.params = trainable_parameters(built.module)
        if not self.params:
            raise UsageError(f"--train: {name} has no trainable parameters")
        self.optimizer = make_optimizer(self.params, self.options)

    def loss(self, inputs: tuple) -> torch.Tensor:
        output = self.built.call(inputs, self.module)
        loss_fn: Callable | None = getattr(self.built, "loss", None)
        return loss_fn(output, inputs) if loss_fn is not None else default_loss(output)

    def __call__(self, inputs: tuple) -> torch.Tensor:
        loss = self.loss(inputs)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def graph_body(self, inputs: tuple) -> torch.Tensor:
        """The same step in the order of PyTorch's whole-network CUDA-graph recipe (zero_grad first)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(inputs)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


def _storage_key(t: torch.Tensor) -> tuple:
    return (t.device.type, t.untyped_storage().data_ptr())


def _nbytes(tensors) -> int:
    """Bytes of distinct storages among `tensors` (views of one storage counted once)."""
    seen: dict[tuple, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.numel() > 0:
            seen[_storage_key(t)] = t.untyped_storage().nbytes()
    return sum(seen.values())


class SavedActivations:
    """Bytes of the distinct tensors autograd saves for backward, parameters and `exclude` left out."""

    def __init__(self, module: nn.Module, exclude: tuple = ()):
        self.skip = {_storage_key(t) for t in list(module.parameters()) + list(module.buffers())}
        self.skip |= {_storage_key(t) for t in exclude if isinstance(t, torch.Tensor)}
        self.sizes: dict[tuple, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in self.skip and t.numel() > 0:
            self.sizes[key] = t.untyped_storage().nbytes()
        return t

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)

    @property
    def bytes(self) -> int:
        return sum(self.sizes.values())


@dataclass
class MemorySplit:
    """Bytes held by each part of a training step (see the module docstring for how each is measured)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int | None        # CUDA allocator delta over the forward; None on CPU
    saved_activations: int         # tensors saved for backward (all devices)
    inputs: int
    peak: int | None = None        # CUDA: max allocated over a steady step
    method: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        mib = lambda b: None if b is None else b / MIB  # noqa: E731
        out = {"train_weights_mib": mib(self.weights), "train_grads_mib": mib(self.gradients),
               "train_optimizer_mib": mib(self.optimizer), "train_activations_mib": mib(self.activations),
               "train_saved_activations_mib": mib(self.saved_activations), "train_inputs_mib": mib(self.inputs),
               "train_peak_mib": mib(self.peak), "train_memory_method": self.method}
        if "grads_tensor_bytes" in self.extra:  # CUDA: the live tensors' sizes beside the allocator deltas
            out["train_grads_tensors_mib"] = mib(self.extra["grads_tensor_bytes"])
            out["train_optimizer_tensors_mib"] = mib(self.extra["optimizer_tensor_bytes"])
        if self.peak is not None and self.activations is not None:
            parts = self.weights + self.gradients + self.optimizer + self.activations + self.inputs
            out["train_peak_other_mib"] = (self.peak - parts) / MIB  # workspaces, allocator rounding, temporaries
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_split(step: TrainingStep, inputs: tuple) -> MemorySplit:
    """Measure the memory split on `step`'s first optimizer step (call before any other step)."""
    module = step.built.module
    device = next(module.parameters()).device
    on_cuda = device.type == "cuda"
    allocated = (lambda: torch.cuda.memory_allocated(device)) if on_cuda else (lambda: 0)
    weights = _nbytes(list(module.parameters()) + list(module.buffers()))
    input_bytes = _nbytes(t for t in inputs if isinstance(t, torch.Tensor))
    saved = SavedActivations(module, inputs)
    if step.optimizer.state:
        raise RuntimeError("memory_split needs a fresh optimizer (no step taken yet)")

    _sync(device)
    before = allocated()
    with saved.hooks():
        loss = step.loss(inputs)
    _sync(device)
    after_forward = allocated()
    loss.backward()
    del loss
    _sync(device)
    after_backward = allocated()
    grads = [p.grad for p in step.params if p.grad is not None]
    step.optimizer.step()
    _sync(device)
    after_step = allocated()
    state = [t for s in step.optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    step.optimizer.zero_grad(set_to_none=True)
    if on_cuda:
        split = MemorySplit(weights, after_backward - before, after_step - after_backward, after_forward - before,
                            saved.bytes, input_bytes, method="cuda allocator deltas (weights, inputs: tensor sizes)")
        split.extra = {"grads_tensor_bytes": _nbytes(grads), "optimizer_tensor_bytes": _nbytes(state)}
        torch.cuda.reset_peak_memory_stats(device)
        step(inputs)
        _sync(device)
        split.peak = torch.cuda.max_memory_allocated(device)
        return split
    return MemorySplit(weights, _nbytes(grads), _nbytes(state), None, saved.bytes, input_bytes,
                       method="cpu: sizes of live tensors (.grad, optimizer.state, saved for backward)")


def train_flops(step: TrainingStep, inputs: tuple) -> tuple[int, int]:
    """(forward FLOPs, forward + loss + backward FLOPs) of one step, FlopCounterMode's count (2 × MAC).

    The gradients this backward makes are dropped afterwards (no optimizer step is taken)."""
    with torch.no_grad():
        forward, _ = count_flops(lambda: step.loss(inputs))
    total, _ = count_flops(lambda: step.loss(inputs).backward())
    step.optimizer.zero_grad(set_to_none=True)
    return forward, total


def warm_up(step: TrainingStep, inputs: tuple) -> None:
    """One forward + backward without an optimizer step; the gradients are dropped."""
    step.loss(inputs).backward()
    step.optimizer.zero_grad(set_to_none=True)


def step_phases(step: TrainingStep, inputs: tuple, repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Mean ms per step of forward (with loss), backward and optimizer (step + zero_grad).

    CUDA: events recorded between the phases on the device timeline; CPU: perf_counter."""
    device = next(step.built.module.parameters()).device
    for _ in range(warmup):
        step(inputs)
    _sync(device)
    totals = {"forward_ms": 0.0, "backward_ms": 0.0, "optimizer_ms": 0.0}
    for _ in range(repeats):
        if device.type == "cuda":
            marks = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
            stamp = lambda i: marks[i].record()  # noqa: E731
        else:
            marks = [0.0] * 4

            def stamp(i):
                marks[i] = time.perf_counter()
        stamp(0)
        loss = step.loss(inputs)
        stamp(1)
        loss.backward()
        stamp(2)
        step.optimizer.step()
        step.optimizer.zero_grad(set_to_none=True)
        stamp(3)
        _sync(device)
        if device.type == "cuda":
            spans = [marks[i].elapsed_time(marks[i + 1]) for i in range(3)]
        else:
            spans = [(marks[i + 1] - marks[i]) * 1e3 for i in range(3)]
        for key, span in zip(totals, spans):
            totals[key] += span
    out = {k: v / repeats for k, v in totals.items()}
    out["step_ms"] = sum(out.values())
    out["method"] = "cuda-events" if device.type == "cuda" else "perf_counter"
    return out


class StepCall:
    """A training step shaped like a `Built` for the runner's execution modes: `call(inputs, module)` runs one
    step (on `module`, e.g. the compiled one, when given); `module` is the module stepped.

    Under `--graphs` the runner captures the whole step (forward, loss, backward, optimizer step) in one
    CUDA graph, PyTorch's whole-network capture: warm-up steps on a side stream, then `graph_body` captured
    with the gradients set to None before it, so that backward allocates them from the graph's pool and
    every replay writes the same (static) gradient tensors; the optimizer is AdamW with `capturable=True`
    (its step counters live on the device and are updated by the replay). `graph_body` is the eager step
    in another order (zero_grad first): the same updates, step for step (tests/test_training.py).
    """

    handles_exec_mode = False  # the runner applies graphs / compile to the step
    stages = None              # one step is one call: no stage split
    forward = None             # the call is `call`, not module(*inputs)

    def __init__(self, step: TrainingStep, graphs: bool = False):
        self.step = step
        self.module = step.built.module
        self.graphs = graphs

    def call(self, inputs: tuple, module: nn.Module | None = None) -> torch.Tensor:
        if module is not None:
            self.step.module = module
        return self.step.graph_body(inputs) if self.graphs else self.step(inputs)


def train_mode(built, inputs: tuple, options: TrainOptions, graphs: bool = False, name: str = "component",
               count_flops: bool = True) -> tuple[StepCall, dict[str, Any]]:
    """Set up `--train`: a fresh step, its memory split (first step) and FLOPs; returns what to time and
    the record fields. With `graphs` the optimizer is capturable (its step counter lives on the device)."""
    import warnings
    from dataclasses import replace

    if graphs:  # the eager steps before the capture (memory split, warm-up) are meant to run uncaptured
        warnings.filterwarnings("ignore", message="This instance was constructed with capturable=True")
    step = TrainingStep(built, replace(options, capturable=graphs), name=name)
    trainable, frozen = param_counts(built.module)
    try:  # forward + backward once before the split: cuBLAS workspaces and autograd's device threads
        # are created on the first pass and would otherwise read as activations and gradients
        forward, total = train_flops(step, inputs) if count_flops else (None, warm_up(step, inputs))
        split = memory_split(step, inputs)
    except RuntimeError as exc:  # an op without a backward, a dtype an optimizer refuses, ...
        if "out of memory" in str(exc).lower():
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UsageError(f"--train: {name} cannot take a training step: {first}") from None
    fields: dict[str, Any] = {
        "train": True, "train_optimizer": options.optimizer, "train_lr": options.lr,
        "train_loss": "component" if getattr(built, "loss", None) is not None else "mean of output",
        "grad_checkpointing": options.grad_checkpointing, "params_trainable": trainable, "params_frozen": frozen,
        "gflops": None if total is None else total / 1e9, "flops_scope": "forward+backward",
        "gflops_forward": None if forward is None else forward / 1e9,
        **split.fields()}
    return StepCall(step, graphs), fields
