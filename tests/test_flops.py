"""FLOPs (2×MAC) of a linear layer and of attention against hand-computed values."""
import torch
from torch import nn
from torch.nn import functional as F

from effprof.measure.flops import count_flops


def test_linear_flops_are_two_macs_per_output_element():
    batch, tokens, d_in, d_out = 3, 5, 7, 11
    layer = nn.Linear(d_in, d_out)
    x = torch.randn(batch, tokens, d_in)
    total, per_module = count_flops(lambda: layer(x))
    assert total == 2 * batch * tokens * d_in * d_out  # bias adds are not counted, as in FlopCounterMode


class TinyAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


def test_attention_layer_counts_the_attention_matmuls():
    b, t, d, h = 2, 9, 16, 4
    layer = TinyAttention(d, h)
    x = torch.randn(b, t, d)
    total, per_module = count_flops(lambda: layer(x))
    projections = 2 * b * t * d * (3 * d) + 2 * b * t * d * d
    attention = 2 * b * h * t * t * (d // h) * 2  # QK^T and AV, each 2·T·T·head_dim per head
    assert total == projections + attention
    assert per_module["Global"] == total
