"""VisionZip (Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models",
CVPR 2025; reference code dvlab-research/VisionZip, `visionzip/clip_encoder.py` and `utils.py`).

On the feature layer's output H (B, 1 + N, C) (LLaVA's penultimate CLIP layer, class token first):
1. Dominant tokens: the class token's attention in the feature layer's own self-attention, summed over
   heads; the class token plus the `dominant - 1` patches of largest attention, in their original order.
   Only the class row is computed, from the layer's q/k projections captured while it ran (the reference
   asks the tower for every layer's full attention maps).
2. Contextual tokens: the R = 1 + N - dominant remaining tokens (original order) are split into
   `contextual` targets (every ⌊R / contextual⌋-th) and the rest; each of the rest joins the target whose
   key (the layer's keys averaged over heads, L2-normalised) is most cosine-similar; each target becomes
   the mean of itself and its members.
Output (B, dominant + contextual, C): 54 + 10 = 64 by default; 108 + 20 = 128 and 162 + 30 = 192 are the
paper's other settings. The class token is one of the dominant tokens, as in the reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from effprof.modules.reducers.vision import VisionOutput

VARIANTS = {64: (54, 10), 128: (108, 20), 192: (162, 30)}


def class_attention_by_head(q: torch.Tensor, k: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(class attention summed over heads (B, T), keys averaged over heads (B, T, d)) from q/k (B, T, heads·d)."""
    batch, tokens, width = k.shape
    d = width // num_heads
    keys = k.view(batch, tokens, num_heads, d).transpose(1, 2)            # (B, h, T, d)
    q_cls = q[:, :1].view(batch, 1, num_heads, d).transpose(1, 2)        # (B, h, 1, d)
    attention = ((q_cls.float() @ keys.float().transpose(2, 3)) * d ** -0.5).softmax(dim=-1)
    return attention[:, :, 0].sum(dim=1), keys.mean(dim=1)


def dominant_indices(class_attention: torch.Tensor, dominant: int) -> torch.Tensor:
    """(B, dominant) token indices, ascending: 0 (the class token) and the top dominant-1 patches by attention."""
    top = class_attention[:, 1:].topk(dominant - 1, dim=1).indices + 1
    zero = torch.zeros_like(top[:, :1])
    return torch.cat([zero, top], dim=1).sort(dim=1).values


def contextual_merge(hidden: torch.Tensor, metric: torch.Tensor, contextual: int) -> torch.Tensor:
    """Merge the tokens `hidden` (B, R, C) into `contextual` tokens by the cosine similarity of `metric` (B, R, d)."""
    remaining = hidden.shape[1]
    step = max(1, remaining // contextual)
    targets = torch.arange(0, remaining, step, device=hidden.device)[:contextual]
    is_target = torch.zeros(remaining, dtype=torch.bool, device=hidden.device)
    is_target[targets] = True
    normed = F.normalize(metric.float(), dim=-1)
    similarity = normed[:, ~is_target] @ normed[:, targets].transpose(1, 2)   # (B, R - c, c)
    assign = F.one_hot(similarity.argmax(dim=-1), len(targets)).to(torch.float32)
    counts = 1 + assign.sum(dim=1).unsqueeze(-1)                               # (B, c, 1)
    x = hidden.float()
    return ((assign.transpose(1, 2) @ x[:, ~is_target] + x[:, targets]) / counts).to(hidden.dtype)


class VisionZip(nn.Module):
    """VisionZip on a VisionOutput (needs the feature layer's q/k); see the module docstring."""

    needs_qk = True

    def __init__(self, dominant: int = 54, contextual: int = 10):
        super().__init__()
        if dominant < 1 or contextual < 1:
            raise ValueError("dominant and contextual must be at least 1")
        self.dominant, self.contextual = dominant, contextual

    def extra_repr(self) -> str:
        return f"dominant={self.dominant}, contextual={self.contextual}"

    def forward(self, vision: VisionOutput) -> torch.Tensor:
        hidden = vision.hidden
        if vision.qk is None:
            raise ValueError("VisionZip needs the feature layer's q/k (VisionOutput.qk)")
        if self.dominant + self.contextual > hidden.shape[1]:
            raise ValueError(f"dominant + contextual = {self.dominant + self.contextual} exceeds the "
                             f"{hidden.shape[1]} tokens of the feature layer")
        attention, metric = class_attention_by_head(*vision.qk, vision.num_heads)
        keep = dominant_indices(attention, self.dominant)
        rest = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device).scatter_(1, keep, False)
        batch, width = hidden.shape[0], hidden.shape[-1]
        dominant = hidden.gather(1, keep.unsqueeze(-1).expand(-1, -1, width))
        remaining = hidden[rest].view(batch, -1, width)
        remaining_metric = metric[rest].view(batch, -1, metric.shape[-1])
        return torch.cat([dominant, contextual_merge(remaining, remaining_metric, self.contextual)], dim=1)

    def tokens_out(self, num_patches: int) -> int:
        return self.dominant + self.contextual
