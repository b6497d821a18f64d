"""VisionZip (Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models",
CVPR 2025; reference code dvlab-research/VisionZip, `visionzip/clip_encoder.py` and `utils.py`).

On the feature layer's output H (B, 1 + N, C) (LLaVA's penultimate CLIP layer, class token first):
1. Dominant tokens: the class token's attention in the feature layer's own self-attention, summed over
   heads; the class token plus the `dominant - 1` patches of largest attention, in their original order.
   Only the class row is computed, from the layer's q/k projections captured while it ran (the reference
   asks the tower for every layer's full attention maps).
2. Contextual tokens: the R = 1 + N - dominant remaining tokens (original order) are split into
   `contextual` targets (every ⌊R / contextual⌋-th) and the rest; each of the rest joins the target whose
   key (the layer's keys averaged over heads, L2-normalised) is most cosine-similar. `merge` says what a
   target becomes:
   - `authors` (the default, as the reference's `clip_encoder.py`): the target plus the mean of its
     members, t + Σ m / max(n, 1) (a target with no member stays as it is);
   - `mean`: the plain mean of the target and its members, (t + Σ m) / (1 + n). Not the authors' code
     (effprof's earlier reading of the paper); a token at the scale of its inputs, about half the
     authors' scale, kept to measure what that scale does to fidelity.
Output (B, dominant + contextual, C): 54 + 10 = 64 by default; 108 + 20 = 128 and 162 + 30 = 192 are the
paper's other settings. The class token is one of the dominant tokens, as in the reference.

Every index has a size fixed by the parameters (top-k, a stable sort of a 0/1 flag for the complement,
gathers), so the reducer captures in a CUDA graph; the reference selects with boolean masks, which read a
count back on the host. The results are the same (tested against a hand-computed example and against the
reference's recipe on transformers' own attention maps). Departure: attention, similarity and merge run
in float32 and the output is cast back (the reference computes in the model's dtype).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from effprof.modules.reducers.vision import VisionOutput

VARIANTS = {64: (54, 10), 128: (108, 20), 192: (162, 30)}
MERGES = ("authors", "mean")


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
    zero = torch.zeros(top.shape[0], 1, dtype=top.dtype, device=top.device)   # (top may be empty: dominant 1)
    return torch.cat([zero, top], dim=1).sort(dim=1).values


def complement_indices(chosen: torch.Tensor, total: int) -> torch.Tensor:
    """(B, total - k) the indices in [0, total) not in `chosen` (B, k, distinct), ascending, without a
    boolean mask: a stable sort of the 0/1 flag puts the unchosen first, in index order."""
    flag = torch.zeros(chosen.shape[0], total, dtype=torch.int32, device=chosen.device).scatter_(1, chosen, 1)
    return flag.sort(dim=1, stable=True).indices[:, :total - chosen.shape[1]]


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, T, C) at index (B, K) -> (B, K, C)."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def contextual_merge(hidden: torch.Tensor, metric: torch.Tensor, contextual: int, merge: str = "authors") -> torch.Tensor:
    """Merge the tokens `hidden` (B, R, C) into `contextual` tokens by the cosine similarity of `metric` (B, R, d)
    (module docstring; `merge` = authors | mean). Float32 math, returned in `hidden`'s dtype."""
    if merge not in MERGES:
        raise ValueError(f"merge must be one of {MERGES}, got {merge!r}")
    batch, remaining, _ = hidden.shape
    step = max(1, remaining // contextual)
    targets = torch.arange(contextual, device=hidden.device) * step                      # every step-th, c of them
    members = complement_indices(targets.expand(batch, -1), remaining)                   # (B, R - c)
    normed = F.normalize(metric.float(), dim=-1)
    target_metric = normed[:, :contextual * step:step]
    similarity = _take(normed, members) @ target_metric.transpose(1, 2)                 # (B, R - c, c)
    nearest = similarity.argmax(dim=-1, keepdim=True)                                    # (B, R - c, 1)
    assign = torch.zeros_like(similarity).scatter_(2, nearest, 1.0)   # one-hot (F.one_hot checks its range
                                                                       # by reading back on a CPU)
    x = hidden.float()
    sums = assign.transpose(1, 2) @ _take(x, members)                                    # (B, c, C)
    counts = assign.sum(dim=1).unsqueeze(-1)                                             # (B, c, 1)
    target_x = x[:, :contextual * step:step]
    if merge == "authors":
        out = target_x + sums / counts.clamp(min=1)
    else:
        out = (target_x + sums) / (1 + counts)
    return out.to(hidden.dtype)


class VisionZip(nn.Module):
    """VisionZip on a VisionOutput (needs the feature layer's q/k); see the module docstring."""

    needs_qk = True

    def __init__(self, dominant: int = 54, contextual: int = 10, merge: str = "authors"):
        super().__init__()
        if dominant < 1 or contextual < 1:
            raise ValueError("dominant and contextual must be at least 1")
        if merge not in MERGES:
            raise ValueError(f"merge must be one of {MERGES}, got {merge!r}")
        self.dominant, self.contextual, self.merge = dominant, contextual, merge

    def extra_repr(self) -> str:
        return f"dominant={self.dominant}, contextual={self.contextual}, merge={self.merge}"

    def forward(self, vision: VisionOutput) -> torch.Tensor:
        hidden = vision.hidden
        if vision.qk is None:
            raise ValueError("VisionZip needs the feature layer's q/k (VisionOutput.qk)")
        if self.dominant + self.contextual > hidden.shape[1]:
            raise ValueError(f"dominant + contextual = {self.dominant + self.contextual} exceeds the "
                             f"{hidden.shape[1]} tokens of the feature layer")
        attention, metric = class_attention_by_head(*vision.qk, vision.num_heads)
        keep = dominant_indices(attention, self.dominant)
        rest = complement_indices(keep, hidden.shape[1])
        contextual = contextual_merge(_take(hidden, rest), _take(metric, rest), self.contextual, self.merge)
        return torch.cat([_take(hidden, keep), contextual], dim=1)

    def tokens_out(self, num_patches: int) -> int:
        return self.dominant + self.contextual
