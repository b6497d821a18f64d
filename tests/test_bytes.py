"""Bytes moved under effprof's convention: inputs read once, outputs written once, views free."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from effprof.core.op_bytes import tensor_bytes
from effprof.measure.bytes import BytesFlopsMode, count_bytes, count_flops_and_bytes
from effprof.measure.flops import count_flops

F32 = 4


@pytest.mark.parametrize("inference", [False, True])
@pytest.mark.parametrize("shape", [(5, 8), (2, 3, 8)])
def test_linear_reads_input_weight_bias_and_writes_output(inference, shape):
    lin = torch.nn.Linear(8, 16)
    x = torch.randn(*shape)
    rows = x.numel() // 8
    expected = F32 * (rows * 8 + 8 * 16 + 16 + rows * 16)
    with torch.inference_mode(inference):
        assert count_bytes(lambda: lin(x)) == expected


def test_linear_without_bias_in_bf16():
    lin = torch.nn.Linear(32, 64, bias=False).to(torch.bfloat16)
    x = torch.randn(4, 32, dtype=torch.bfloat16)
    assert count_bytes(lambda: lin(x)) == 2 * (4 * 32 + 32 * 64 + 4 * 64)


def test_elementwise_ops():
    a, b = torch.randn(100), torch.randn(100)
    n = 100 * F32
    assert count_bytes(lambda: a + b) == 3 * n          # two inputs, one output
    assert count_bytes(lambda: a * a) == 2 * n          # the same tensor twice is read once
    assert count_bytes(lambda: a.add_(b)) == 3 * n      # in place: read a and b, write a
    assert count_bytes(lambda: a.copy_(b)) == 2 * n     # destination only written
    assert count_bytes(lambda: a.zero_()) == n
    out = torch.empty(100)
    assert count_bytes(lambda: torch.add(a, b, out=out)) == 3 * n   # out= is not read
    assert count_bytes(lambda: torch.add(a, b, out=a)) == 3 * n     # ... unless it is also an input


def test_views_and_metadata_ops_move_nothing():
    x = torch.randn(4, 6)
    for view in (lambda: x.view(24), lambda: x.reshape(6, 4), lambda: x.t(), lambda: x.transpose(0, 1),
                 lambda: x.permute(1, 0), lambda: x[None].expand(3, 4, 6), lambda: x[1:3], lambda: x[2],
                 lambda: x.select(1, 2), lambda: x.as_strided((2, 2), (1, 1)), lambda: x.detach(),
                 lambda: x.unsqueeze(0), lambda: x.split(2), lambda: x.unbind(0), lambda: x.narrow(0, 1, 2),
                 lambda: torch.empty(10, 10), lambda: x.size(), lambda: x.is_contiguous()):
        assert count_bytes(view) == 0


def test_copying_reshape_and_contiguous_count_one_copy():
    x = torch.randn(4, 6)
    assert count_bytes(lambda: x.t().contiguous()) == 2 * 24 * F32
    assert count_bytes(lambda: x.t().reshape(24)) == 2 * 24 * F32   # not a view: clone + _unsafe_view


def test_broadcast_dimensions_count_once():
    row = torch.randn(1, 8)
    expanded = row.expand(5, 8)
    assert tensor_bytes(expanded) == 8 * F32
    assert count_bytes(lambda: expanded + 1) == (8 + 40) * F32
    full = torch.randn(5, 8)
    assert count_bytes(lambda: full + row) == (40 + 8 + 40) * F32
    assert count_bytes(lambda: torch.randn(5, 8)) == 40 * F32  # a random fill writes its output


def test_flops_match_flop_counter_and_per_module_counts():
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(),
                                torch.nn.Sequential(torch.nn.Linear(16, 4), torch.nn.ReLU()))
    x = torch.randn(2, 3, 8)
    with torch.inference_mode():
        counts = count_flops_and_bytes(lambda: model(x), model)
        reference, _ = count_flops(lambda: model(x))
    rows = 6
    assert counts.flops == reference == 2 * rows * (8 * 16 + 16 * 4)
    lin1 = F32 * (rows * 8 + 8 * 16 + 16 + rows * 16)
    gelu = F32 * 2 * rows * 16
    lin2 = F32 * (rows * 16 + 16 * 4 + 4 + rows * 4)
    relu = F32 * 2 * rows * 4
    assert counts.bytes_per_module == {"": lin1 + gelu + lin2 + relu, "0": lin1, "1": gelu, "2": lin2 + relu,
                                       "2.0": lin2, "2.1": relu}
    assert counts.flops_per_module == {"": counts.flops, "0": 2 * rows * 8 * 16, "1": 0, "2": 2 * rows * 16 * 4,
                                       "2.0": 2 * rows * 16 * 4, "2.1": 0}
    assert counts.bytes == counts.bytes_per_module[""]


def test_module_called_twice_counts_twice(linear_applied_twice):
    model, x = linear_applied_twice(4), torch.randn(3, 4)
    counts = count_flops_and_bytes(lambda: model(x), model)
    once = F32 * (12 + 16 + 4 + 12)
    assert counts.bytes_per_module["lin"] == 2 * once == counts.bytes
    assert counts.flops_per_module["lin"] == 2 * 2 * 3 * 4 * 4


def test_nests_with_flop_counter_mode():
    lin, x = torch.nn.Linear(8, 16), torch.randn(5, 8)
    with FlopCounterMode(display=False) as flop_counter, BytesFlopsMode() as mode:
        lin(x)
    assert flop_counter.get_total_flops() == mode.total_flops == 2 * 5 * 8 * 16
    assert mode.total_bytes == F32 * (40 + 128 + 16 + 80)


def test_attention_reads_q_k_v_and_writes_output():
    q, k, v = (torch.randn(2, 4, 16, 8) for _ in range(3))
    n = q.numel() * F32
    with torch.inference_mode():
        moved = count_bytes(lambda: F.scaled_dot_product_attention(q, k, v))
        counts = count_flops_and_bytes(lambda: F.scaled_dot_product_attention(q, k, v))
    assert moved == counts.bytes >= 4 * n  # at least q, k, v read and the output written
    assert counts.flops == 2 * 2 * 4 * 16 * 16 * (8 + 8)  # 2·B·H·Tq·Tk·(d_qk + d_v), as count_flops


def test_indexed_reads_read_only_the_gathered_elements():
    table, ids = torch.randn(1000, 16), torch.tensor([[3, 7, 7]])
    row = 16 * F32
    assert count_bytes(lambda: F.embedding(ids, table)) == 3 * 8 + 2 * 3 * row       # ids, 3 rows read, written
    idx, picked = torch.tensor([0, 5]), torch.empty(2, 16)
    assert count_bytes(lambda: table.index_select(0, idx)) == 2 * 8 + 2 * 2 * row
    assert count_bytes(lambda: torch.index_select(table, 0, idx, out=picked)) == 2 * 8 + 2 * 2 * row
    assert count_bytes(lambda: table[idx]) == 2 * 8 + 2 * 2 * row
    small, often = torch.randn(2, 4), torch.zeros(50, dtype=torch.long)  # gathering more than the source: once
    assert count_bytes(lambda: small[often]) == 50 * 8 + 8 * F32 + 50 * 4 * F32


def test_indexed_writes_in_place_move_only_the_indexed_elements():
    cache = torch.zeros(2, 4, 1024, 8)                             # (batch, heads, slots, dim): a static KV cache
    new, slot = torch.randn(2, 4, 1, 8), torch.tensor([17])
    token = new.numel() * F32
    assert count_bytes(lambda: cache.index_copy_(2, slot, new)) == 8 + 2 * token     # index, source, the slot
    assert count_bytes(lambda: cache.index_add_(2, slot, new)) == 8 + 3 * token      # ... read back to add
    flat, rows, ones, two = torch.zeros(100, 6), torch.tensor([1, 4, 9]), torch.ones(6), torch.tensor(2.0)
    assert count_bytes(lambda: flat.index_put_((rows,), ones)) == 3 * 8 + 6 * F32 + 3 * 6 * F32
    mask = torch.zeros(100, 6, dtype=torch.bool)
    mask[:5, 0] = True                                             # 5 true elements of 600
    assert count_bytes(lambda: flat.index_put_((mask,), two)) == 600 + F32 + 5 * F32
    assert count_bytes(lambda: flat.index_put_((mask,), two, accumulate=True)) == 600 + F32 + 2 * 5 * F32
    on_meta = [t.to("meta") for t in (flat, mask, two)]                # no values: none counted written
    assert count_bytes(lambda: on_meta[0].index_put_((on_meta[1],), on_meta[2])) == 600 + F32
    cube, mid, row = torch.zeros(3, 50, 7), torch.tensor([4, 9]), torch.ones(7)

    def middle_rows():
        cube[:, mid] = row                                        # index_put_ with indices (None, mid)
    assert count_bytes(middle_rows) == 2 * 8 + 7 * F32 + 3 * 2 * 7 * F32
    index, src, col = torch.tensor([[0, 2]]), torch.randn(4, 6), torch.tensor([0])
    assert count_bytes(lambda: flat.scatter_(0, index, src)) == 2 * 8 + 2 * F32 + 2 * F32
    assert count_bytes(lambda: flat.index_fill_(1, col, 1.0)) == 8 + 100 * F32


def test_custom_ops_count_mutated_arguments_and_their_formulas():
    """An op's mutated argument is read and written back (a decoding state); a registered formula replaces the
    rule where a custom op writes part of a buffer (the KV cache's slot) or reads table rows (an embedding)."""
    from effprof.measure.bytes import op_bytes
    import effprof.ops.causal_conv1d  # noqa: F401  (registers the ops and their formulas)
    import effprof.ops.mamba_decode  # noqa: F401
    import effprof.ops.rotary_cache  # noqa: F401

    ops = torch.ops.effprof
    x, w, b = torch.randn(1, 8, 5), torch.randn(8, 4), torch.randn(8)
    state, y = torch.zeros(1, 8, 4), torch.empty(1, 8, 5)
    n = lambda *ts: sum(tensor_bytes(t) for t in ts)  # noqa: E731
    # the conv update reads and writes its state; the prefill's state output is only written
    xs = torch.randn(1, 8)
    assert op_bytes(ops.causal_conv1d_update.default, (xs, state, w, b, True, "ref"), {}, xs) == \
        n(xs, state, w, b) + n(xs, state)
    assert op_bytes(ops.causal_conv1d_to_state.default, (x, w, b, True, state), {}, y) == n(x, w, b, y, state)
    # rotary + cache: q written, one slot of keys and of values, the caches themselves neither read nor written
    keys, values = torch.zeros(1, 2, 64, 4), torch.zeros(1, 2, 64, 4)
    qkv, cos, sin, pos = torch.randn(1, 6 * 4), torch.randn(4), torch.randn(4), torch.tensor([9])
    q = torch.empty(1, 2, 1, 4)
    assert op_bytes(ops.rotary_cache.default, (qkv, cos, sin, keys, values, pos, 2), {}, q) == \
        n(qkv, cos, sin, pos, q) + 2 * 2 * 4 * F32
    # the decode prologue: the ids' rows of the embedding table, the work buffers written
    table, ids = torch.randn(500, 8), torch.tensor([4])
    work = [torch.empty(1, 8), torch.empty(2, 1, 8), torch.empty(1, 32), torch.empty(2, 1, 8), torch.empty(2, 1, 6),
            torch.empty(1, dtype=torch.int32)]
    norm = torch.randn(8)
    assert op_bytes(ops.mamba_decode_prologue.default, (ids, table, norm, 1e-5, *work), {}, None) == \
        n(ids, norm, *work) + 8 * F32
    # a hint argument (a later kernel's weight to prefetch) counts where that kernel reads it, not here
    from effprof.core.op_bytes import NOT_MOVED_ARGUMENTS

    assert NOT_MOVED_ARGUMENTS["effprof::mamba_layer_decode"] == {"next_in_proj_weight"}


def test_a_declared_hint_argument_is_not_counted():
    from effprof.core.op_bytes import declare_not_moved
    from effprof.measure.bytes import op_bytes

    @torch.library.custom_op("effprof_test::scale_with_hint", mutates_args=())
    def scale(x: torch.Tensor, later: torch.Tensor) -> torch.Tensor:
        return x * 2

    x, later = torch.randn(16), torch.randn(1000)
    out = scale(x, later)
    op = torch.ops.effprof_test.scale_with_hint.default
    assert op_bytes(op, (x, later), {}, out) == (16 + 1000 + 16) * F32
    declare_not_moved("effprof_test::scale_with_hint", "later")
    assert op_bytes(op, (x, later), {}, out) == (16 + 16) * F32


def test_attention_on_meta_counts_one_fused_kernel():
    q = torch.empty(2, 4, 16, 8, device="meta")
    k = v = torch.empty(2, 4, 64, 8, device="meta")
    mask = torch.empty(16, 64, dtype=torch.bool, device="meta")
    with torch.inference_mode():
        counts = count_flops_and_bytes(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert counts.bytes == F32 * (q.numel() + k.numel() + q.numel()) + mask.numel()  # q, k (v is k), out; mask
    assert counts.flops == 2 * (2 * 2 * 4 * 16 * 64 * 8)                             # two matmuls
