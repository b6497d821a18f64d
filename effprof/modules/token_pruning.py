"""Visual token pruning before a ViT encoder: keep the patch tokens with the largest L2 norm.

The idea (visual token pruning, VTP): if patch embeddings of small norm carry little signal, a vision
tower can drop them before the transformer and run its quadratic attention and its MLPs on fewer
tokens. One extra *summary token*, the mean of all patch embeddings, keeps a trace of what was dropped.
The score here is the L2 norm of each patch embedding after positions are added (the output of the ViT
embedding layer): it needs no attention map, so pruning happens before the first encoder layer. Related
work: EViT (Liang et al., "Not All Patches are What You Need", ICLR 2022) keeps the top-k tokens by
class-token attention and fuses the rest into one token, which is the pattern followed here with a
norm score and a mean over all patches; "Vision Transformers Need Registers" (Darcet et al., ICLR 2024)
shows that token norms are far from uniform in trained ViTs.

Layout of the output sequence: `[class token, summary token (optional), kept patches ...]`, the kept
patches in descending order of norm (`torch.topk` order). Attention without positional terms inside the
encoder is permutation-equivariant, so this order changes the class-token output only by rounding.

`NormTopKPruner` is the fast path (one `topk` + one `gather` for the whole batch);
`norm_topk_prune_reference` is the definition written the slow obvious way (a per-sample sort in a Python
loop). `tests/test_clip.py` compares them on random inputs.
"""
from __future__ import annotations

import math

import torch
from torch import nn

# keep·N is rounded up, but a float product like 0.07·100 = 7.000000000000001 must not become 8.
_CEIL_SLACK = 1e-9


def kept_patch_count(keep_ratio: float, num_patches: int) -> int:
    """Number of patch tokens kept: ⌈keep_ratio · num_patches⌉, at least 1, at most num_patches.

    Raises ValueError when keep_ratio is outside (0, 1]."""
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep ratio must be in (0, 1], got {keep_ratio}")
    return min(num_patches, max(1, math.ceil(keep_ratio * num_patches - _CEIL_SLACK)))


def pruned_token_count(keep_ratio: float, num_patches: int, summary_token: bool = True) -> int:
    """Tokens entering the encoder: class token + summary token (if any) + kept patches."""
    return 1 + int(summary_token) + kept_patch_count(keep_ratio, num_patches)


class NormTopKPruner(nn.Module):
    """Keep the ⌈keep_ratio·N⌉ patch embeddings of largest L2 norm, plus a mean summary token.

    Input: embeddings of shape (batch, 1 + N, dim): the class token first, then N patch tokens (the
    output of a CLIP/ViT embedding layer, positions already added). Output: (batch, 1 + s + k, dim) with
    s = 1 if `summary_token` else 0 and k = ⌈keep_ratio·N⌉: the class token, the summary token (mean of
    ALL N patch embeddings, pruned ones included) and the k kept patches in descending norm order.

    With keep_ratio = 1.0 every patch is kept and the summary token is still added when
    `summary_token` is True (1 + 1 + N tokens): this is what the anchor measurement in ANCHORS.md does,
    so keep=1.0 measures the pruning machinery at zero pruning. Disable `summary_token` to ablate it.

    Parameters hold no weights. The norm is computed in the embedding dtype; ties (equal norms) are
    broken by `torch.topk`, which real-valued random or learned embeddings practically never hit.
    """

    def __init__(self, keep_ratio: float, summary_token: bool = True):
        super().__init__()
        kept_patch_count(keep_ratio, 1)  # validates the range
        self.keep_ratio = float(keep_ratio)
        self.summary_token = bool(summary_token)

    def extra_repr(self) -> str:
        return f"keep_ratio={self.keep_ratio}, summary_token={self.summary_token}"

    def kept_count(self, num_patches: int) -> int:
        return kept_patch_count(self.keep_ratio, num_patches)

    def output_tokens(self, num_patches: int) -> int:
        return pruned_token_count(self.keep_ratio, num_patches, self.summary_token)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        if embeddings.dim() != 3 or embeddings.shape[1] < 2:
            raise ValueError(f"expected (batch, 1 + patches, dim) embeddings, got shape {tuple(embeddings.shape)}")
        class_token, patches = embeddings[:, :1], embeddings[:, 1:]
        k = self.kept_count(patches.shape[1])
        index = patches.norm(dim=-1).topk(k, dim=1).indices  # (batch, k), descending norm
        kept = patches.gather(1, index.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        parts = [class_token]
        if self.summary_token:
            parts.append(patches.mean(dim=1, keepdim=True))
        parts.append(kept)
        return torch.cat(parts, dim=1)


def norm_topk_prune_reference(embeddings: torch.Tensor, keep_ratio: float, summary_token: bool = True) -> torch.Tensor:
    """The definition of `NormTopKPruner`, one sample at a time with a full sort. Slow; for tests."""
    batch, tokens, dim = embeddings.shape
    num_patches = tokens - 1
    k = kept_patch_count(keep_ratio, num_patches)
    rows = []
    for b in range(batch):
        patches = [embeddings[b, 1 + i] for i in range(num_patches)]
        norms = [float(torch.sqrt((p.double() ** 2).sum())) for p in patches]
        order = sorted(range(num_patches), key=lambda i: -norms[i])
        row = [embeddings[b, 0]]
        if summary_token:
            row.append((torch.stack(patches).double().sum(dim=0) / num_patches).to(embeddings.dtype))
        row.extend(patches[i] for i in order[:k])
        rows.append(torch.stack(row))
    return torch.stack(rows)
