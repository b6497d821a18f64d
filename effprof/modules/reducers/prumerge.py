"""LLaVA-PruMerge and PruMerge+ (Shang, Cai, Xu, Lee, Yan, "LLaVA-PruMerge: Adaptive Token Reduction for
Efficient Large Multimodal Models", 2024; reference code 42Shawn/LLaVA-PruMerge, `clip_encoder.py`).

On the feature layer's patch tokens X (B, N, C) (LLaVA's penultimate CLIP layer):
1. Class attention: the attention of the class token over the 1 + N tokens in the tower's *next* layer
   (the reference hooks `q_proj`/`k_proj` of `layers[23]`, whose input is the penultimate output), as one
   head over the full width C with scale C^-0.5, softmax over all keys; a = its patch columns (B, N).
   Only the class row's query and all keys are computed (the reference computes the whole N×N map and
   keeps row 0; the row is the same).
2. Adaptive count by IQR outliers: k = ⌊N · (#a > Q3 + 1.5·IQR) / #a⌋, quartiles over the whole batch
   flattened (as the reference does); the k tokens of largest a are kept.
3. PruMerge+ adds spatially uniform samples: every ⌊⌊1/ratio⌋/3⌋-th patch index in [0, N-1) that is not
   kept already (the reference's `arange(0, 575, step)`, filtered against every kept index of the batch).
4. Merge: each kept token x_i becomes x_i + Σ_j a_j x_j over the `neighbours` (32) other patches whose
   keys are most cosine-similar to its key (kept or pruned alike, itself excluded), and one more token
   Σ_{j pruned} a_j x_j carries the pruned mass. Output (B, k + 1, C) (k + samples + 1 for PruMerge+).

`merge_batched` is the fast path (one similarity matmul, one top-k, one sparse-weights matmul for the whole
batch); `merge_loop_reference` follows the reference's per-sample, per-kept-token Python loop, with the
reference's granularity (one batched op per step of an iteration: its cost is the host's launches of ~10
small kernels per kept token). The tests compare both with a pair-by-pair model of the merge. Departures, all documented in the record: the softmax runs in float32 (the reference: the model's
dtype); at least one token is kept (the reference divides by zero when no attention value is an outlier).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from effprof.modules.reducers.vision import VisionOutput


def class_attention_full_width(next_layer: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a (B, N) class attention over the patches, patch keys (B, N, C)) from `next_layer`'s q/k of `hidden`."""
    x = next_layer.layer_norm1(hidden)
    q_cls = next_layer.self_attn.q_proj(x[:, :1])             # (B, 1, C): only the class row is needed
    keys = next_layer.self_attn.k_proj(x)                      # (B, 1 + N, C)
    logits = (q_cls.float() @ keys.float().transpose(1, 2)) * hidden.shape[-1] ** -0.5
    return logits.softmax(dim=-1)[:, 0, 1:], keys[:, 1:]


def iqr_outlier_count(attention: torch.Tensor) -> int:
    """⌊N · fraction of values above Q3 + 1.5·IQR⌋, quartiles over every value of `attention` (B, N) at once
    (linear interpolation, as numpy.percentile); at least 1."""
    flat = attention.float().flatten()
    q1, q3 = torch.quantile(flat, torch.tensor([0.25, 0.75], device=flat.device))
    ratio = int((flat > q3 + 1.5 * (q3 - q1)).sum()) / flat.numel()
    return max(1, int(attention.shape[1] * ratio))


def uniform_samples(kept: torch.Tensor, num_patches: int) -> torch.Tensor:
    """PruMerge+'s spatial samples: indices 0, s, 2s, ... below num_patches - 1 with s = ⌊⌊N/k⌋/3⌋ (at least
    1) for k kept of N, minus every index kept anywhere in the batch; shape (m,)."""
    step_length = int(1 / (kept.shape[1] / num_patches))
    sequence = torch.arange(0, num_patches - 1, max(1, step_length // 3), device=kept.device)
    return sequence[~torch.isin(sequence, kept.flatten())]


def merge_batched(features: torch.Tensor, keys: torch.Tensor, attention: torch.Tensor, kept: torch.Tensor,
                  neighbours: int) -> torch.Tensor:
    """PruMerge's merge for the whole batch. features/keys (B, N, C), attention (B, N), kept (B, k) indices.
    Returns (B, k + 1, C): the updated kept tokens in `kept` order, then the pruned-mass token."""
    batch, n, _ = features.shape
    normed = F.normalize(keys.float(), dim=-1)
    kept_normed = normed.gather(1, kept.unsqueeze(-1).expand(-1, -1, normed.shape[-1]))
    similarity = kept_normed @ normed.transpose(1, 2)          # (B, k, N)
    similarity.scatter_(2, kept.unsqueeze(-1), float("-inf"))  # a token is not its own neighbour
    nearest = similarity.topk(min(neighbours, n - 1), dim=-1).indices
    weights = torch.zeros_like(similarity).scatter_(2, nearest, attention.float().unsqueeze(1).expand(-1, kept.shape[1], -1)
                                                    .gather(2, nearest))
    x = features.float()
    kept_x = x.gather(1, kept.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    pruned = torch.ones(batch, n, device=x.device, dtype=torch.bool).scatter_(1, kept, False)
    extra = ((attention.float() * pruned).unsqueeze(1) @ x)
    return torch.cat([kept_x + weights @ x, extra], dim=1).to(features.dtype)


def merge_loop_reference(features: torch.Tensor, keys: torch.Tensor, attention: torch.Tensor, kept: torch.Tensor,
                         neighbours: int) -> torch.Tensor:
    """The same merge as the reference runs it: a Python loop over the samples and, inside, over the kept tokens,
    each iteration one tensor op per step on the whole rest (the other kept tokens, then the pruned ones in
    ascending order): cosine similarity of the token's key with every rest key (one matmul), top-`neighbours`,
    gather the neighbours and their class attention, weighted sum; the pruned-mass token is one sum for the
    batch. The loop's cost is about ten small kernels per kept token, launched from the host. Slow."""
    batch, n, width = features.shape
    x, a, normed = features.float(), attention.float(), F.normalize(keys.float(), dim=-1)
    pruned_mask = torch.ones(batch, n, device=x.device, dtype=torch.bool).scatter_(1, kept, False)
    pruned = pruned_mask.nonzero()[:, 1].reshape(batch, n - kept.shape[1])   # ascending within each sample
    kept_x = x.gather(1, kept.unsqueeze(-1).expand(-1, -1, width))
    kept_a, kept_keys = a.gather(1, kept), normed.gather(1, kept.unsqueeze(-1).expand(-1, -1, width))
    pruned_x = x.gather(1, pruned.unsqueeze(-1).expand(-1, -1, width))
    pruned_a, pruned_keys = a.gather(1, pruned), normed.gather(1, pruned.unsqueeze(-1).expand(-1, -1, width))
    updated = kept_x.clone()
    for b in range(batch):
        for i in range(kept.shape[1]):
            rest_keys = torch.cat([kept_keys[b, :i], kept_keys[b, i + 1:], pruned_keys[b]])
            rest_x = torch.cat([kept_x[b, :i], kept_x[b, i + 1:], pruned_x[b]])
            rest_a = torch.cat([kept_a[b, :i], kept_a[b, i + 1:], pruned_a[b]])
            similarity = kept_keys[b, i] @ rest_keys.T
            chosen = similarity.topk(max(1, min(neighbours, similarity.shape[0]))).indices
            updated[b, i] = kept_x[b, i] + (rest_x[chosen] * rest_a[chosen].unsqueeze(-1)).sum(dim=0)
    extra = (pruned_x * pruned_a.unsqueeze(-1)).sum(dim=1, keepdim=True)
    return torch.cat([updated, extra], dim=1).to(features.dtype)


class PruMerge(nn.Module):
    """PruMerge (plus=False) or PruMerge+ (plus=True) on a VisionOutput; see the module docstring."""

    needs_qk = False
    host_sync = True   # the IQR count is read back on the host: its stage runs eagerly under --graphs

    def __init__(self, plus: bool = False, neighbours: int = 32, batched: bool = True):
        super().__init__()
        self.plus, self.neighbours, self.batched = plus, neighbours, batched
        self.last_kept: int | None = None   # tokens kept by IQR (+ samples) on the last call

    def extra_repr(self) -> str:
        return f"plus={self.plus}, neighbours={self.neighbours}, merge={'batched' if self.batched else 'loop'}"

    def forward(self, vision: VisionOutput) -> torch.Tensor:
        if vision.next_layer is None:
            raise ValueError("PruMerge reads the layer after the feature layer; the feature layer is the last")
        attention, keys = class_attention_full_width(vision.next_layer, vision.hidden)
        kept = attention.topk(iqr_outlier_count(attention), dim=1).indices
        if self.plus:
            samples = uniform_samples(kept, attention.shape[1])
            kept = torch.cat([kept, samples.unsqueeze(0).expand(kept.shape[0], -1)], dim=1)
        self.last_kept = kept.shape[1]
        merge = merge_batched if self.batched else merge_loop_reference
        return merge(vision.features, keys, attention, kept, self.neighbours)

    def tokens_text(self, num_patches: int) -> str:
        return "adaptive: IQR outliers" + (" + uniform samples" if self.plus else "") + " + 1"
