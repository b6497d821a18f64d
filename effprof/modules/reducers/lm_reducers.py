"""LM-side reducers: image tokens dropped between the decoder layers of the language model.

- FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024; code pkunlp-icler/FastV):
  at layer K (2) keep round((1-R)·n) image tokens (R = 0.5: 288 of 576) that the last token attends to
  most in layer K-1 (head mean); every later layer runs on the rest. Positions kept.
- PyramidDrop (Xing et al., "PyramidDrop", CVPR 2025; code Cooperx521/PyramidDrop): after layers 8, 16
  and 24 rank the image tokens by the last instruction token's attention (head mean) in the next layer's
  q/k and keep ⌊n₀·λ^s⌋ of the n₀ original (λ = 0.5: 288, 144, 72 of 576); the reference renumbers the
  positions of the shortened sequence 0..L'-1, and so does this.
- SparseVLM (Zhang et al., "SparseVLM", ICML 2025; code Gumpest/SparseVLMs): text "raters" are chosen
  once from the input embeddings (the text tokens after the image whose mean softmax relevance to the
  image tokens is above the mean); at layers 2, 6 and 15 the image tokens are ranked by the raters'
  attention (head mean, rater mean) from that layer's q/k, the top `schedule` kept (192: 300/200/110,
  128: 303/110/36, 64: 66/30/17, at most n-1), and the pruned ones are partly recycled: the top
  ⌊0.3·p⌋ + 1 of the p pruned by the same score are clustered by density peaks (DPC-KNN) into
  ⌊m/10⌋ + 1 tokens (cluster means), placed after the kept image tokens with their centres' positions.
  Dropped from layer l + 1 on.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from effprof.modules.reducers.lm_prefill import (IMAGE, DropStage, PrefillResult, Sequence, attention_rows,
                                                 image_layout, initial_sequence, keep_top_image, prefill_with_drops)

SPARSEVLM_LAYERS = (2, 6, 15)
SPARSEVLM_SCHEDULES = {192: (300, 200, 110), 128: (303, 110, 36), 64: (66, 30, 17)}


def last_token_image_attention(layer, seq: Sequence, position_embeddings) -> torch.Tensor:
    """(B, L) attention of the last token over every token, mean over heads."""
    rows = torch.full((seq.hidden.shape[0], 1), seq.hidden.shape[1] - 1, device=seq.hidden.device)
    return attention_rows(layer, seq.hidden, position_embeddings, rows).mean(dim=1)[:, 0]


class TopKStage(DropStage):
    """Score by the last token's attention in `score_layer`; keep `keep` image tokens before `drop_before`."""

    def __init__(self, score_layer: int, drop_before: int, keep: int, renumber: bool = False):
        self.score_layer, self.drop_before, self.keep, self.renumber = score_layer, drop_before, keep, renumber

    def score(self, layer, seq, position_embeddings):
        return last_token_image_attention(layer, seq, position_embeddings)

    def apply(self, seq, scores):
        seq = keep_top_image(seq, scores, min(self.keep, seq.image_count()))
        if self.renumber:
            seq.position_ids = torch.arange(seq.hidden.shape[1], device=seq.hidden.device).expand_as(seq.position_ids)
        return seq


class LMReducer:
    """Base: `prefill(lm, embeds, image_mask, position_ids)` through `prefill_with_drops` with `stages(n)`."""

    def stages(self, image_tokens: int, num_layers: int) -> list[DropStage]:
        raise NotImplementedError

    def prefill(self, lm, embeds, image_mask, position_ids=None) -> PrefillResult:
        key = (tuple(embeds.shape[:2]), tuple(image_mask.shape))
        cache = self.__dict__.setdefault("_layouts", {})
        if key not in cache:   # read the mask once per shape (outside any CUDA-graph capture: the warm-up)
            cache[key] = image_layout(image_mask, *embeds.shape[:2])
        seq = self.prepare(initial_sequence(embeds, image_mask, position_ids, cache[key]))
        model = lm.model if hasattr(lm, "model") and hasattr(lm.model, "layers") else lm
        return prefill_with_drops(lm, embeds, image_mask, position_ids,
                                  self.stages(seq.image_count(), len(model.layers)), seq=seq)

    def prepare(self, seq: Sequence) -> Sequence:
        return seq


class FastV(LMReducer):
    def __init__(self, k: int = 2, ratio: float = 0.5):
        if k < 1:
            raise ValueError("FastV's K must be at least 1 (it reads layer K-1's attention)")
        self.k, self.ratio = k, ratio

    def kept(self, image_tokens: int) -> int:
        return round(image_tokens * (1 - self.ratio))   # Python's round, as the reference

    def stages(self, image_tokens, num_layers):
        if self.k >= num_layers:
            raise ValueError(f"FastV K={self.k} must be below the LM's {num_layers} layers")
        return [TopKStage(self.k - 1, self.k, self.kept(image_tokens))]


class PyramidDrop(LMReducer):
    def __init__(self, layers: tuple[int, ...] = (8, 16, 24), ratio: float = 0.5):
        self.layers, self.ratio = tuple(layers), ratio

    def kept(self, image_tokens: int, stage: int) -> int:
        return int(image_tokens * self.ratio ** (stage + 1))

    def stages(self, image_tokens, num_layers):
        if max(self.layers) >= num_layers:
            raise ValueError(f"PyramidDrop layers {self.layers} must be below the LM's {num_layers} layers")
        return [TopKStage(layer, layer, self.kept(image_tokens, s), renumber=True) for s, layer in enumerate(self.layers)]


def dpc_knn_merge(x: torch.Tensor, clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Density-peak clustering with k-nearest-neighbour density (DPC-KNN, as TCFormer and SparseVLM use):
    returns (cluster means (B, c, C), centre indices (B, c)). Density = exp(-mean squared distance to the
    c nearest tokens), distances scaled by 1/√C; centres = top c of density × distance to the nearest denser
    token; every token joins its nearest centre. Equal densities are broken by index (the reference adds
    1e-6 uniform noise)."""
    batch, m, width = x.shape
    xf = x.float()
    dist = torch.cdist(xf, xf) / width ** 0.5
    nearest = dist.topk(min(clusters, m), dim=-1, largest=False).values
    density = (-(nearest ** 2).mean(dim=-1)).exp()
    density = density + torch.arange(m, device=x.device) * 1e-9
    denser = density[:, None, :] > density[:, :, None]
    far = dist.flatten(1).max(dim=-1).values[:, None, None]
    delta = torch.where(denser, dist, far).min(dim=-1).values
    centres = (delta * density).topk(clusters, dim=-1).indices
    assign = dist.gather(1, centres.unsqueeze(-1).expand(-1, -1, m)).argmin(dim=1)            # (B, m)
    assign.scatter_(1, centres, torch.arange(clusters, device=x.device).expand(batch, -1))
    onehot = torch.zeros(batch, m, clusters, device=x.device).scatter_(2, assign.unsqueeze(-1), 1.0)
    merged = (onehot.transpose(1, 2) @ xf) / (onehot.sum(dim=1).unsqueeze(-1) + 1e-6)
    return merged.to(x.dtype), centres


class SparseStage(DropStage):
    def __init__(self, layer: int, keep: int, recycle: bool = True):
        self.score_layer, self.drop_before, self.keep, self.recycle = layer, layer + 1, keep, recycle

    def score(self, layer, seq, position_embeddings):
        length = seq.hidden.shape[1]
        rows = torch.arange(length - seq.suffix, length, device=seq.hidden.device).expand(seq.hidden.shape[0], -1)
        attention = attention_rows(layer, seq.hidden, position_embeddings, rows).mean(dim=1)  # (B, T, L)
        raters = seq.extra["rater"].gather(1, rows).float()                             # (B, T)
        return (raters.unsqueeze(-1) * attention).sum(dim=1) / raters.sum(dim=1, keepdim=True).clamp(min=1)

    def apply(self, seq, scores):
        n = seq.image_count()
        keep = min(self.keep, n - 1)
        image_scores = scores.masked_fill(seq.kind != IMAGE, float("-inf"))
        order = image_scores.topk(n, dim=1).indices                  # image tokens, best first
        kept = keep_top_image(seq, scores, keep)
        if not self.recycle or keep >= n:
            return kept
        pruned = order[:, keep:]
        recycled = pruned[:, :int((n - keep) * 0.3) + 1]              # best of the pruned by the same score
        clusters = int(recycled.shape[1] / 10) + 1
        tokens = seq.hidden.gather(1, recycled.unsqueeze(-1).expand(-1, -1, seq.hidden.shape[-1]))
        merged, centres = dpc_knn_merge(tokens, clusters)
        centre_index = recycled.gather(1, centres)
        split = seq.prefix + keep                                     # right after the kept image tokens
        parts = ((kept.hidden, merged), (kept.position_ids, seq.position_ids.gather(1, centre_index)),
                 (kept.kind, torch.full_like(centre_index, IMAGE)))
        parts += tuple((kept.extra[k], v.gather(1, centre_index)) for k, v in seq.extra.items())
        joined = [torch.cat([a[:, :split], b, a[:, split:]], dim=1) for a, b in parts]
        return Sequence(*joined[:3], seq.prefix, keep + clusters, dict(zip(seq.extra, joined[3:])))


class SparseVLM(LMReducer):
    def __init__(self, tokens: int = 192, layers: tuple[int, ...] = SPARSEVLM_LAYERS, recycle: bool = True):
        self.schedule = SPARSEVLM_SCHEDULES[tokens]
        self.layers, self.recycle = tuple(layers), recycle

    def prepare(self, seq: Sequence) -> Sequence:
        """Raters: text tokens after the image whose mean softmax relevance to the image is above the mean."""
        if seq.suffix < 1 or seq.images < 2:
            raise ValueError("SparseVLM needs at least 2 image tokens and text after the image")
        image = seq.hidden[:, seq.prefix:seq.prefix + seq.images].float()
        text = seq.hidden[:, seq.hidden.shape[1] - seq.suffix:].float()
        relevance = (image @ text.transpose(1, 2)).softmax(dim=2).mean(dim=1)        # (B, T)
        chosen = relevance > relevance.mean(dim=1, keepdim=True)
        rater = torch.zeros(seq.kind.shape, dtype=torch.bool, device=seq.kind.device)
        rater[:, seq.hidden.shape[1] - seq.suffix:] = chosen
        seq.extra["rater"] = rater
        return seq

    def stages(self, image_tokens, num_layers):
        if max(self.layers) >= num_layers:
            raise ValueError(f"SparseVLM layers {self.layers} must be below the LM's {num_layers} layers")
        return [SparseStage(layer, keep, self.recycle) for layer, keep in zip(self.layers, self.schedule)]
