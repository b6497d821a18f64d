"""A prefill that can drop tokens between decoder layers, for any `transformers` Llama language model.

`prefill_with_drops(lm, embeds, image_mask, position_ids, stages)` runs the decoder layers of a
`LlamaModel` (or the `.model` of a `LlamaForCausalLM`) one by one, exactly as `LlamaModel.forward` does
for a prompt without a cache (rotary embeddings from the position ids, causal attention, final norm),
and lets `stages` drop tokens between layers: a stage scores the tokens from a layer's input
(`score_layer`) and removes some before another layer runs (`drop_before`). The dropped tokens leave the
sequence for every later layer; the kept ones keep their original position ids for rotary (unless a
stage renumbers them, as the references of PyramidDrop and SparseVLM v1 do), and the causal mask is
rebuilt over the shorter sequence. With no stages the result equals `lm(inputs_embeds=embeds)` (tested).

Returns the final-norm hidden state of the last token, its logits when the model has an `lm_head`, and
the tokens and image tokens entering every layer.

`attention_rows` computes only what a scoring rule needs: the softmax attention rows of a few query
tokens (the last one, or the text "raters") over all keys, from a layer's own q/k projections of its
input. SDPA does not return attention weights; recomputing the k projection of that layer (2·L·d·d_kv
FLOPs) and the rows' logits is the cost of scoring, inside the reducer's prefill and counted by
FlopCounterMode there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

IMAGE, PREFIX, SUFFIX = 1, 0, 2   # token kinds: text before the image, image, text after it


@dataclass
class PrefillResult:
    hidden: torch.Tensor                     # (B, D) last token, after the final norm
    logits: torch.Tensor | None              # (B, V) when the LM has an lm_head
    tokens_per_layer: list[int] = field(default_factory=list)
    image_tokens_per_layer: list[int] = field(default_factory=list)


@dataclass
class Sequence:
    """The current sequence and what travels with each token through drops.

    The layout is [prefix text | images | suffix text] in every sample, with the same counts (`prefix`,
    `images` as Python ints, so no step needs to read a count back from the device: a drop keeps the
    layout, and the loop can be captured in a CUDA graph)."""

    hidden: torch.Tensor        # (B, L, D)
    position_ids: torch.Tensor  # (B, L)
    kind: torch.Tensor          # (B, L) PREFIX / IMAGE / SUFFIX
    prefix: int
    images: int
    extra: dict[str, torch.Tensor] = field(default_factory=dict)   # (B, L) per-token tags (e.g. raters)

    def gather(self, index: torch.Tensor, images: int) -> "Sequence":
        """The tokens at `index` (B, L'), in that order, `images` of them image tokens."""
        take = lambda t: t.gather(1, index)   # noqa: E731
        hidden = self.hidden.gather(1, index.unsqueeze(-1).expand(-1, -1, self.hidden.shape[-1]))
        return Sequence(hidden, take(self.position_ids), take(self.kind), self.prefix, images,
                        {k: take(v) for k, v in self.extra.items()})

    def image_count(self) -> int:
        return self.images

    @property
    def suffix(self) -> int:
        return self.hidden.shape[1] - self.prefix - self.images


def split_lm(lm: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """(the LlamaModel with .layers/.norm/.rotary_emb, the lm_head or None)."""
    if hasattr(lm, "layers"):
        return lm, None
    if hasattr(lm, "model") and hasattr(lm.model, "layers"):
        return lm.model, getattr(lm, "lm_head", None)
    raise TypeError(f"{type(lm).__name__} is not a transformers Llama model (no .layers)")


def causal_mask(model: nn.Module, length: int, reference: torch.Tensor) -> torch.Tensor | None:
    """None for SDPA (its is_causal path, as LlamaModel uses for a prompt); else an additive (1, 1, L, L) mask."""
    if getattr(model.config, "_attn_implementation", "sdpa") == "sdpa":
        return None
    upper = torch.ones(length, length, dtype=torch.bool, device=reference.device).triu(1)
    return torch.zeros(length, length, dtype=reference.dtype, device=reference.device).masked_fill(
        upper, torch.finfo(reference.dtype).min)[None, None]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def attention_rows(layer: nn.Module, hidden: torch.Tensor, position_embeddings, rows: torch.Tensor) -> torch.Tensor:
    """Softmax attention of the query tokens at sequence indices `rows` (B, R) over all keys, causal, from
    `layer`'s q/k projections of its input `hidden` (B, L, D). Returns (B, heads, R, L), float32."""
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    batch, length, _ = x.shape
    d = attn.head_dim
    cos, sin = position_embeddings                                   # (B, L, d)
    x_rows = x.gather(1, rows.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    q = attn.q_proj(x_rows).view(batch, rows.shape[1], -1, d).transpose(1, 2)
    k = attn.k_proj(x).view(batch, length, -1, d).transpose(1, 2)
    row_cos = cos.gather(1, rows.unsqueeze(-1).expand(-1, -1, d)).unsqueeze(1)
    row_sin = sin.gather(1, rows.unsqueeze(-1).expand(-1, -1, d)).unsqueeze(1)
    q = q * row_cos + rotate_half(q) * row_sin
    k = k * cos.unsqueeze(1) + rotate_half(k) * sin.unsqueeze(1)
    groups = q.shape[1] // k.shape[1]                                # grouped-query attention: each kv head
    k = k[:, :, None].expand(-1, -1, groups, -1, -1).reshape(batch, -1, length, d)   # serves `groups` q heads
    logits = (q.float() @ k.float().transpose(2, 3)) * attn.scaling
    future = torch.arange(length, device=x.device)[None, None, None, :] > rows[:, None, :, None]
    return logits.masked_fill(future, float("-inf")).softmax(dim=-1)


def keep_top_image(seq: Sequence, scores: torch.Tensor, keep: int) -> Sequence:
    """Keep every text token and the `keep` image tokens of largest `scores` (B, L), in sequence order."""
    text = seq.hidden.shape[1] - seq.images
    ranked = scores.float().masked_fill(seq.kind != IMAGE, float("inf"))
    index = ranked.topk(text + keep, dim=1).indices.sort(dim=1).values
    return seq.gather(index, keep)


class DropStage:
    """One drop: `score(layer, seq, position_embeddings) -> state` before layer `score_layer` runs, then
    `apply(seq, state) -> seq` before layer `drop_before` runs."""

    score_layer: int
    drop_before: int

    def score(self, layer: nn.Module, seq: Sequence, position_embeddings) -> Any:
        raise NotImplementedError

    def apply(self, seq: Sequence, state: Any) -> Sequence:
        raise NotImplementedError


def image_layout(image_mask: torch.Tensor, batch: int, length: int) -> tuple[int, int]:
    """(prefix, images) of a mask that marks one contiguous block of image tokens at the same place in every
    sample (the only time a reducer reads the device: callers may cache it per shape)."""
    mask = image_mask.to(torch.bool).expand(batch, length).cpu()
    counts = mask.sum(dim=1)
    images = int(counts[0])
    if bool((counts != images).any()):
        raise ValueError("every sample must have the same number of image tokens")
    prefix = int(mask[0].long().argmax()) if images else length
    block = torch.zeros(length, dtype=torch.bool)
    block[prefix:prefix + images] = True
    if not bool((mask == block).all()):
        raise ValueError("image tokens must form one block at the same positions in every sample")
    return prefix, images


def initial_sequence(embeds: torch.Tensor, image_mask: torch.Tensor, position_ids: torch.Tensor | None,
                     layout: tuple[int, int] | None = None) -> Sequence:
    batch, length, _ = embeds.shape
    prefix, images = layout or image_layout(image_mask, batch, length)
    if position_ids is None:
        position_ids = torch.arange(length, device=embeds.device)
    position_ids = position_ids.expand(batch, length)
    kind = torch.full((length,), SUFFIX, dtype=torch.long, device=embeds.device)
    kind[:prefix] = PREFIX
    kind[prefix:prefix + images] = IMAGE
    return Sequence(embeds, position_ids, kind.expand(batch, length), prefix, images)


def prefill_with_drops(lm: nn.Module, embeds: torch.Tensor, image_mask: torch.Tensor,
                       position_ids: torch.Tensor | None = None, stages: list[DropStage] = (),
                       seq: Sequence | None = None) -> PrefillResult:
    """Run the prompt through the LM's decoder layers, applying `stages` between layers (module docstring)."""
    model, head = split_lm(lm)
    seq = seq or initial_sequence(embeds, image_mask, position_ids)
    pending: dict[int, Any] = {}
    tokens, images = [], []
    position_embeddings = model.rotary_emb(seq.hidden, seq.position_ids)
    for i, layer in enumerate(model.layers):
        # drops scored at an earlier layer first, so that a stage scoring at this layer sees the shorter
        # sequence (SparseVLM at consecutive layers); then this layer's scores, then the drops they make here
        for scoring_now in (False, True):
            if scoring_now:
                for j, stage in enumerate(stages):
                    if stage.score_layer == i:
                        pending[j] = stage.score(layer, seq, position_embeddings)
            changed = False
            for j, stage in enumerate(stages):
                if stage.drop_before == i and j in pending:
                    seq = stage.apply(seq, pending.pop(j))
                    changed = True
            if changed:
                position_embeddings = model.rotary_emb(seq.hidden, seq.position_ids)
        tokens.append(seq.hidden.shape[1])
        images.append(seq.image_count())
        out = layer(seq.hidden, attention_mask=causal_mask(model, seq.hidden.shape[1], seq.hidden),
                    position_ids=seq.position_ids, position_embeddings=position_embeddings)
        seq.hidden = out[0] if isinstance(out, tuple) else out
    last = model.norm(seq.hidden)[:, -1]
    return PrefillResult(last, head(last) if head is not None else None, tokens, images)


def lm_fidelity(reduced: PrefillResult, reference: PrefillResult) -> dict[str, Any]:
    """Per batch: mean and min cosine similarity of the last token's final hidden state, float32, and the
    fraction of samples whose greedy next token (argmax of the logits) agrees with the unreduced model's."""
    cos = torch.nn.functional.cosine_similarity(reduced.hidden.float(), reference.hidden.float(), dim=-1)
    fields: dict[str, Any] = {"fidelity_cos": float(cos.mean()), "fidelity_cos_min": float(cos.min()),
                              "fidelity_of": "final hidden state of the prompt's last token"}
    if reduced.logits is not None and reference.logits is not None:
        agree = reduced.logits.argmax(dim=-1) == reference.logits.argmax(dim=-1)
        fields["next_token_agreement"] = float(agree.float().mean())
    return fields
