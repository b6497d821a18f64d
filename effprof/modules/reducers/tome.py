"""Token Merging, ToMe (Bolya, Fu, Dai, Zhang, Feichtenhofer, Hoffman, "Token Merging: Your ViT But Faster",
ICLR 2023; reference code facebookresearch/ToMe, `tome/merge.py` and `tome/patch/timm.py`), in a CLIP tower.

In every block, between the attention and the MLP, r tokens are merged by bipartite soft matching:
tokens alternate into sets A (even positions) and B (odd); each A token's most similar B token is found
by the cosine similarity of the attention keys averaged over heads; the r A tokens with the most similar
partners are merged into them (size-weighted means: x ← Σ s·x / Σ s, sizes add), the other A tokens stay.
The class token (position 0, in A) is protected: it never merges. Attention is proportional: its logits
get + log(size of the key) so a merged token weighs as much as the tokens it stands for (an additive
mask to SDPA). r is capped at (T - 1) // 2 per block, so a block with T tokens leaves T - min(r, (T-1)//2).

`bipartite_soft_matching` returns the merge as index tensors (one gather, one scatter_reduce per call);
`merge_wavg` applies it with sizes. Test: the merge keeps the total size and picks the most similar pairs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from effprof.modules.reducers.vision import TowerTokens


def bipartite_soft_matching(metric: torch.Tensor, r: int, class_token: bool = True):
    """A function merge(x, mode) that merges r tokens of x (B, T, ·) as decided by `metric` (B, T, d), or
    None when nothing can merge. Output order: the unmerged A tokens (ascending), then all B tokens."""
    protected = int(class_token)
    tokens = metric.shape[1]
    r = min(r, (tokens - protected) // 2)
    if r <= 0:
        return None
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[..., ::2, :], metric[..., 1::2, :]
    scores = a @ b.transpose(-1, -2)
    if class_token:
        scores[..., 0, :] = -math.inf
    node_max, node_idx = scores.max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
    unmerged = edge_idx[..., r:, :].sort(dim=1).values   # keeps the class token first
    src_idx = edge_idx[..., :r, :]
    dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)

    def merge(x: torch.Tensor, mode: str = "sum") -> torch.Tensor:
        src, dst = x[..., ::2, :], x[..., 1::2, :]
        n, t1, c = src.shape
        unm = src.gather(dim=-2, index=unmerged.expand(n, t1 - r, c))
        src = src.gather(dim=-2, index=src_idx.expand(n, r, c))
        dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce=mode)
        return torch.cat([unm, dst], dim=1)

    return merge


def merge_wavg(merge, x: torch.Tensor, size: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average merge: (merged x, merged sizes); `size` None = every token is one."""
    if size is None:
        size = torch.ones_like(x[..., 0, None])
    x = merge(x * size, mode="sum")
    size = merge(size, mode="sum")
    return x / size, size


def tome_layer(layer: nn.Module, hidden: torch.Tensor, size: torch.Tensor | None, r: int,
               proportional: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One CLIP encoder layer with ToMe: attention (proportional to size), merge r tokens, MLP."""
    attn = layer.self_attn
    batch, tokens, width = hidden.shape
    heads = attn.num_heads
    x = layer.layer_norm1(hidden)
    q, k, v = (proj(x).view(batch, tokens, heads, -1).transpose(1, 2)
               for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    mask = None
    if proportional and size is not None:
        mask = size.log()[:, None, None, :, 0].to(q.dtype)        # (B, 1, 1, T): + log s of each key
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)
    hidden = hidden + attn.out_proj(out.transpose(1, 2).reshape(batch, tokens, width))
    merge = bipartite_soft_matching(k.mean(dim=1), r, class_token=True)
    if merge is not None:
        hidden, size = merge_wavg(merge, hidden, size)
    return hidden + layer.mlp(layer.layer_norm2(hidden)), size


def tome_token_counts(tokens: int, r: int, layers: int) -> list[int]:
    """Tokens entering each of `layers` blocks and leaving the last: T, T - min(r, (T-1)//2), ..."""
    counts = [tokens]
    for _ in range(layers):
        counts.append(counts[-1] - max(0, min(r, (counts[-1] - 1) // 2)))
    return counts


class ToMe(nn.Module):
    """Vision-inner reducer: ToMe in each of the tower's blocks that run, r tokens per block."""

    def __init__(self, r: int = 16, proportional: bool = True):
        super().__init__()
        self.r, self.proportional = r, proportional

    def extra_repr(self) -> str:
        return f"r={self.r}, proportional_attention={self.proportional}"

    def encode(self, trunk: nn.Module, pixel_values: torch.Tensor, interpolate: bool, num_layers: int) -> TowerTokens:
        hidden = trunk.pre_layrnorm(trunk.embeddings(pixel_values, interpolate_pos_encoding=interpolate))
        size = None
        counts = [hidden.shape[1]]
        for layer in trunk.encoder.layers[:num_layers]:
            hidden, size = tome_layer(layer, hidden, size, self.r, self.proportional)
            counts.append(hidden.shape[1])
        return TowerTokens(hidden, size, counts)

    def tokens_per_layer(self, tokens: int, num_layers: int) -> list[int]:
        return tome_token_counts(tokens, self.r, num_layers)
