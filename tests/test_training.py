"""The training step (effprof.measure.training): what it updates, what it holds, what it counts."""
import pytest
import torch
from torch import nn

from effprof.core.errors import UsageError
from effprof.measure.training import (TrainingStep, TrainOptions, default_loss, memory_split, param_counts,
                                      step_phases, train_flops)
from effprof.core.registry import Built

BATCH, IN, HIDDEN, OUT = 3, 8, 16, 4


def tiny(freeze_first: bool, act: nn.Module | None = None, input_grad: bool = False) -> Built:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(IN, HIDDEN), act or nn.ReLU(), nn.Linear(HIDDEN, OUT))
    if freeze_first:
        module[0].requires_grad_(False)

    def make_inputs(batch):
        return (torch.randn(batch, IN, requires_grad=input_grad),)

    return Built(module, make_inputs, "tok")


def test_step_updates_exactly_the_trainable_parameters():
    built = tiny(freeze_first=True)
    before = {name: p.detach().clone() for name, p in built.module.named_parameters()}
    step = TrainingStep(built, TrainOptions(lr=1e-2))
    inputs = built.make_inputs(BATCH)
    for _ in range(2):
        step(inputs)
    after = dict(built.module.named_parameters())
    for name in ("0.weight", "0.bias"):
        assert torch.equal(after[name], before[name]), name  # frozen: bit-identical
        assert after[name].grad is None
    for name in ("2.weight", "2.bias"):
        assert not torch.equal(after[name], before[name]), name
        assert after[name].grad is None  # zero_grad(set_to_none=True) ran
    assert param_counts(built.module) == (HIDDEN * OUT + OUT, IN * HIDDEN + HIDDEN)
    assert {id(p) for p in step.params} == {id(built.module[2].weight), id(built.module[2].bias)}


def test_sgd_step_equals_the_update_rule():
    built = tiny(freeze_first=False)
    inputs = built.make_inputs(BATCH)
    reference = {n: p.detach().clone() for n, p in built.module.named_parameters()}
    loss = built.module(*inputs).mean()
    grads = dict(zip(reference, torch.autograd.grad(loss, list(built.module.parameters()))))
    TrainingStep(built, TrainOptions(optimizer="sgd", lr=0.5))(inputs)
    for name, p in built.module.named_parameters():  # first SGD step: momentum buffer = grad, p -= lr * grad
        torch.testing.assert_close(p.detach(), reference[name] - 0.5 * grads[name])


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_memory_split_equals_the_closed_forms_on_cpu(optimizer):
    built = tiny(freeze_first=True, act=nn.GELU())
    step = TrainingStep(built, TrainOptions(optimizer=optimizer))
    split = memory_split(step, built.make_inputs(BATCH))
    n_trainable = HIDDEN * OUT + OUT
    n_all = IN * HIDDEN + HIDDEN + n_trainable
    assert split.weights == 4 * n_all
    assert split.gradients == 4 * n_trainable
    if optimizer == "adamw":  # exp_avg + exp_avg_sq in fp32 per parameter, one 0-d fp32 `step` per tensor
        assert split.optimizer == 2 * 4 * n_trainable + 4 * 2
    else:  # one momentum buffer
        assert split.optimizer == 4 * n_trainable
    # frozen Linear+GELU need no graph; the trained Linear saves its input (the GELU output) for its weight grad
    assert split.saved_activations == 4 * BATCH * HIDDEN
    assert split.inputs == 4 * BATCH * IN
    assert split.activations is None and split.peak is None and "cpu" in split.method
    fields = split.fields()
    assert fields["train_grads_mib"] == pytest.approx(4 * n_trainable / 2**20)


def test_saved_activations_of_a_fully_trainable_network():
    built = tiny(freeze_first=False, act=nn.GELU())
    split = memory_split(TrainingStep(built), built.make_inputs(BATCH))
    # GELU saves its input, the second Linear its input (GELU's output); x is an input, not counted
    assert split.saved_activations == 2 * 4 * BATCH * HIDDEN
    assert split.gradients == 4 * sum(p.numel() for p in built.module.parameters())


def test_forward_backward_flops_of_a_linear_are_three_times_forward():
    torch.manual_seed(0)
    layer = nn.Linear(IN, OUT)
    forward_flops = 2 * BATCH * IN * OUT
    built = Built(layer, lambda b: (torch.randn(b, IN, requires_grad=True),), "tok")
    step = TrainingStep(built)
    inputs = built.make_inputs(BATCH)
    assert train_flops(step, inputs) == (forward_flops, 3 * forward_flops)
    # an input that needs no gradient: backward computes only the weight gradient
    built = Built(layer, lambda b: (torch.randn(b, IN),), "tok")
    assert train_flops(TrainingStep(built), built.make_inputs(BATCH)) == (forward_flops, 2 * forward_flops)
    assert layer.weight.grad is None


def test_component_loss_is_used_and_default_is_the_mean():
    built = tiny(freeze_first=False)
    inputs = built.make_inputs(BATCH)
    out = built.module(*inputs)
    assert default_loss((out, None)).item() == pytest.approx(out.mean().item())
    built.loss = lambda output, inputs: (output ** 2).sum()
    assert TrainingStep(built).loss(inputs).item() == pytest.approx((out ** 2).sum().item(), rel=1e-6)


def test_refusals():
    built = tiny(freeze_first=False)
    with pytest.raises(UsageError, match="--optimizer"):
        TrainingStep(built, TrainOptions(optimizer="adam9"))
    with pytest.raises(UsageError, match="--grad-checkpointing"):
        TrainingStep(built, TrainOptions(grad_checkpointing=True), name="tiny")
    built.module.requires_grad_(False)
    with pytest.raises(UsageError, match="no trainable parameters"):
        TrainingStep(built, name="tiny")


def test_step_phases_add_up():
    built = tiny(freeze_first=False)
    phases = step_phases(TrainingStep(built), built.make_inputs(BATCH), repeats=3)
    assert all(phases[k] > 0 for k in ("forward_ms", "backward_ms", "optimizer_ms"))
    assert phases["step_ms"] == pytest.approx(phases["forward_ms"] + phases["backward_ms"] + phases["optimizer_ms"])
    assert phases["method"] == "perf_counter"


def test_selective_scan_op_backpropagates_like_its_reference():
    from effprof.ops.autograd import ensure_registered
    from effprof.ops.selective_scan import selective_scan, selective_scan_ref

    ensure_registered()
    torch.manual_seed(0)
    b, d, n, length = 2, 3, 4, 5
    leaves = [torch.randn(b, d, length), torch.rand(b, d, length), -torch.rand(d, n), torch.randn(b, n, length),
              torch.randn(b, n, length), torch.randn(d), torch.randn(b, d, length), torch.randn(d)]
    grads = []
    for fn in (lambda *a: selective_scan(*a, delta_softplus=True, return_last_state=True, backend="ref"),
               lambda *a: selective_scan_ref(*a, delta_softplus=True, return_last_state=True)):
        args = [t.clone().requires_grad_(True) for t in leaves]
        y, state = fn(*args)
        (y.square().sum() + state.sum()).backward()
        grads.append([a.grad for a in args])
    for via_op, direct in zip(*grads):
        torch.testing.assert_close(via_op, direct)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="allocator deltas need CUDA")
def test_cuda_allocator_deltas_match_the_tensor_sizes():
    from effprof.measure.training import train_mode

    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(256, 1024), nn.GELU(), nn.Linear(1024, 256)).cuda()
    built = Built(module, lambda b: (torch.randn(b, 256, device="cuda"),), "tok")
    _, fields = train_mode(built, built.make_inputs(64), TrainOptions())
    n = sum(p.numel() for p in module.parameters())
    slack = 4 * 512 / 2**20  # the caching allocator rounds each block up to 512 bytes
    assert fields["train_grads_mib"] == pytest.approx(4 * n / 2**20, abs=slack)
    assert fields["train_optimizer_mib"] == pytest.approx(2 * 4 * n / 2**20, abs=2 * slack)
    assert fields["train_grads_tensors_mib"] == pytest.approx(4 * n / 2**20)
    assert fields["train_activations_mib"] >= fields["train_saved_activations_mib"]
    assert fields["train_peak_mib"] >= fields["train_weights_mib"] + fields["train_optimizer_mib"]


def test_the_graph_body_is_the_eager_step_in_math():
    """`graph_body` (the order PyTorch's whole-network capture needs: zero_grad first, gradients left in place)
    takes the same steps as the eager step: the same losses over 3 steps and the same weights after them."""
    eager, graphed = tiny(freeze_first=False), tiny(freeze_first=False)
    torch.manual_seed(1)
    inputs = eager.make_inputs(BATCH)
    step_a, step_b = TrainingStep(eager, TrainOptions(lr=1e-2)), TrainingStep(graphed, TrainOptions(lr=1e-2))
    losses_a = [float(step_a(inputs)) for _ in range(3)]
    losses_b = [float(step_b.graph_body(inputs)) for _ in range(3)]
    assert losses_a == losses_b and len(set(losses_a)) == 3  # the weights move: three different losses
    for a, b in zip(eager.module.parameters(), graphed.module.parameters()):
        assert torch.equal(a, b)


def test_train_step_under_graphs_goes_through_the_runner(monkeypatch):
    """`--train --graphs`: the runner captures the StepCall (no AttributeError), warms up on the step and
    replays it; a stand-in for CUDA graphs on CPU (capture = warm-up calls; replay = the call on the static
    inputs) shows each replay is one more optimizer step."""
    import effprof.measure.execution as execution
    from effprof.core.options import RunOptions
    from effprof.measure.training import train_mode

    captured = []

    def fake_graph(call, inputs, device, warmup_calls=3):
        for _ in range(warmup_calls):
            call(inputs)
        captured.append(inputs)
        return lambda: call(inputs)

    monkeypatch.setattr(execution, "graphed_callable", fake_graph)
    built = tiny(freeze_first=False)
    inputs = built.make_inputs(BATCH)
    step_call, fields = train_mode(built, inputs, TrainOptions(), graphs=False, count_flops=False)
    step_call.graphs = True  # what train_mode(graphs=True) sets (its capturable AdamW needs CUDA)
    opts = RunOptions(device="cpu", train=True, graphs=True)  # not validated: --graphs is refused on cpu
    call, setup, mode = execution.execution_mode(step_call, [inputs], opts, torch.device("cpu"))
    assert mode["exec_mode"] == "train-graphs" and "one CUDA graph per step" in mode["train_exec"]
    assert setup is None and captured == [inputs]
    steps = step_call.step.optimizer.state[step_call.step.params[0]]["step"]
    before = float(steps)
    losses = [float(call()) for _ in range(3)]
    assert float(steps) == before + 3 and losses[0] != losses[-1]


HOST_SYNC_OPS = {"_local_scalar_dense", "nonzero", "is_nonzero", "masked_select", "unique", "_unique2", "equal"}


@pytest.mark.parametrize("adapt", [{"adapt": "full"}, {"adapt": "lora", "rank": 4, "lora_targets": "qv"}])
def test_clip_dual_training_step_reads_nothing_back_on_the_host(adapt):
    """clip-lora's default on CUDA captures the whole step in one graph: its forward, loss and backward must call
    no op that reads a value back on the host (seen at the dispatcher on CPU; the capturable optimizer keeps its
    step counters on the device, so its update reads none either)."""
    from conftest import op_recorder

    from effprof.core.registry import BuildContext, get_component

    component = get_component("clip-dual")
    values = component.resolve({**adapt, "layers": 1, "img_size": 32, "seq_len": 8})
    built = component.build(values, BuildContext(torch.device("cpu"), torch.float32, 0, "graphs"))
    inputs = built.make_inputs(2)
    step = TrainingStep(built, TrainOptions())
    ops = op_recorder()
    with ops:
        step.loss(inputs).backward()
    assert "mm" in ops.seen or "addmm" in ops.seen  # the recorder saw the step
    assert not ops.seen & HOST_SYNC_OPS
