"""LM-side reducers: image tokens dropped between the decoder layers of the language model.

- FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024; code pkunlp-icler/FastV):
  at layer K (2) keep round((1-R)·n) image tokens (R = 0.5: 288 of 576) that the last token attends to
  most in layer K-1 (head mean); every later layer runs on the rest. Positions kept.
- PyramidDrop (Xing et al., "PyramidDrop", CVPR 2025; code Cooperx521/PyramidDrop): after layers 8, 16
  and 24 rank the image tokens by the last instruction token's attention (head mean) in the next layer's
  q/k and keep ⌊n₀·λ^s⌋ of the n₀ original (λ = 0.5: 288, 144, 72 of 576); the reference renumbers the
  positions of the shortened sequence 0..L'-1, and so does this.
- SparseVLM (Zhang et al., "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model
  Inference", ICML 2025; code Gumpest/SparseVLMs, `llava/model/language_model/modelling_sparse_llama.py`,
  `score.py`, `utils.py`): text "raters" are chosen once from the input embeddings (the text tokens after
  the image whose mean softmax relevance to the image tokens is above the mean); at layers 2, 6 and 15 the
  image tokens are ranked by the raters' attention (head mean, rater mean) in that layer (from its q/k),
  the top `schedule` kept (at most n-1), dropped from layer l + 1 on. Two versions, as the reference's
  `USE_VERSION` switch defines them:
  - `v1` (SparseVLM, the reference's default `1_0`; schedules 192: 300/200/110, 128: 303/110/36,
    96: 238/48/26, 64: 66/30/17): the pruned tokens are partly recycled (the top ⌊0.3·p⌋ + 1 of the p
    pruned, by the same score, are clustered by density peaks (DPC-KNN) into ⌊m/10⌋ + 1 cluster means,
    placed after the kept image tokens), and the position ids are renumbered after every drop: the
    shortened sequence of L' tokens takes the first L' position ids (0..L'-1 for a prompt), as the
    reference's `position_ids[:, :L']`.
  - `v2` (SparseVLM+, `2_0`; schedules 192: 300/200/118, 128: 238/108/60, 96: 246/54/28, 64: 66/34/20):
    the kept tokens keep their original position ids; the attention is divided by the attention that
    all-ones queries and keys would have under the same rotary embedding ("text-visual attention gravity
    correction": (R_i 1)·(R_j 1)/√d for query i, key j); the head mean runs over the 14 "priority" heads
    whose corrected rater-to-image attention sums are largest (all heads when the LM has fewer); nothing
    is recycled.
  `recycle` overrides the version's recycling (recycled tokens then take their cluster centres' position
  ids in v2, an effprof extension). Departures: the reference runs one sample (batch 1) and picks heads
  from sample 0; here every sample is ranked, and picks its heads, on its own; equal densities in DPC-KNN
  are broken by index (the reference adds 1e-6 uniform noise); the gravity correction is computed in
  float32 (the reference: the model's dtype).
"""
from __future__ import annotations

import torch

from effprof.modules.reducers.lm_prefill import (IMAGE, DropStage, PrefillResult, Sequence, attention_rows,
                                                 image_layout, initial_sequence, keep_top_image, prefill_with_drops,
                                                 rotate_half)

SPARSEVLM_LAYERS = (2, 6, 15)
SPARSEVLM_SCHEDULES = {   # image tokens kept at layers 2 / 6 / 15, by version and target (the reference's score.py)
    "v1": {192: (300, 200, 110), 128: (303, 110, 36), 96: (238, 48, 26), 64: (66, 30, 17)},
    "v2": {192: (300, 200, 118), 128: (238, 108, 60), 96: (246, 54, 28), 64: (66, 34, 20)},
}
PRIORITY_HEADS = 14   # SparseVLM+'s heads kept for the score (the reference's select_attn_head_by_sum)


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


def rope_gravity(position_embeddings, rows: torch.Tensor) -> torch.Tensor:
    """(B, R, L) the attention logit of an all-ones query at `rows` (B, R) and all-ones keys under the same
    rotary embedding, (R_i 1)·(R_j 1)/√d: SparseVLM+'s "attention gravity" that its scores are divided by."""
    cos, sin = (t.float() for t in position_embeddings)                      # (B, L, d)
    ones = torch.ones_like(cos)
    rotated = ones * cos + rotate_half(ones) * sin                          # R_j 1, every key
    rows_rotated = rotated.gather(1, rows.unsqueeze(-1).expand(-1, -1, rotated.shape[-1]))
    return rows_rotated @ rotated.transpose(1, 2) / cos.shape[-1] ** 0.5


class SparseStage(DropStage):
    """One SparseVLM drop: rank by the raters' attention in layer `layer`, drop before layer `layer + 1`."""

    def __init__(self, layer: int, keep: int, recycle: bool = True, version: str = "v1"):
        self.score_layer, self.drop_before, self.keep, self.recycle = layer, layer + 1, keep, recycle
        self.version = version

    def score(self, layer, seq, position_embeddings):
        length = seq.hidden.shape[1]
        rows = torch.arange(length - seq.suffix, length, device=seq.hidden.device).expand(seq.hidden.shape[0], -1)
        attention = attention_rows(layer, seq.hidden, position_embeddings, rows)             # (B, H, T, L)
        raters = seq.extra["rater"].gather(1, rows).float()                                  # (B, T)
        if self.version == "v2":
            attention = attention / rope_gravity(position_embeddings, rows).unsqueeze(1)
            image = (seq.kind == IMAGE).float()                                             # (B, L)
            per_head = torch.einsum("bhtl,bt,bl->bh", attention, raters, image)
            heads = per_head.topk(min(PRIORITY_HEADS, per_head.shape[1]), dim=1).indices
            attention = attention.gather(1, heads[:, :, None, None].expand(-1, -1, *attention.shape[2:]))
        attention = attention.mean(dim=1)                                                    # (B, T, L)
        return (raters.unsqueeze(-1) * attention).sum(dim=1) / raters.sum(dim=1, keepdim=True).clamp(min=1)

    def apply(self, seq, scores):
        n = seq.image_count()
        keep = min(self.keep, n - 1)
        kept = keep_top_image(seq, scores, keep)
        if self.recycle and keep < n:
            kept = self._recycled(seq, kept, scores, keep)
        if self.version == "v1":   # the reference's position_ids[:, :L']: renumbered after every drop
            kept.position_ids = seq.position_ids[:, :kept.hidden.shape[1]]
        return kept

    @staticmethod
    def _recycled(seq: Sequence, kept: Sequence, scores: torch.Tensor, keep: int) -> Sequence:
        """`kept` with cluster tokens of the best pruned image tokens after its image tokens."""
        n = seq.image_count()
        image_scores = scores.masked_fill(seq.kind != IMAGE, float("-inf"))
        order = image_scores.topk(n, dim=1).indices                  # image tokens, best first
        recycled = order[:, keep:keep + int((n - keep) * 0.3) + 1]    # best of the pruned by the same score
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
    def __init__(self, tokens: int = 192, layers: tuple[int, ...] = SPARSEVLM_LAYERS, recycle: bool | None = None,
                 version: str = "v1"):
        if version not in SPARSEVLM_SCHEDULES:
            raise ValueError(f"SparseVLM version must be one of {tuple(SPARSEVLM_SCHEDULES)}, got {version!r}")
        self.version = version
        self.schedule = SPARSEVLM_SCHEDULES[version][tokens]
        self.layers = tuple(layers)
        self.recycle = (version == "v1") if recycle is None else recycle

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
        return [SparseStage(layer, keep, self.recycle, self.version) for layer, keep in zip(self.layers, self.schedule)]
