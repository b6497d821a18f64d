"""Greedy generation for effprof's VLM pipelines: a prefill, then one decode step per new token.

`Generator` runs `prefill(inputs) -> logits` and `step(token, position) -> logits` as a pipeline
declares them, in the execution mode the run asks for (`BuildContext.exec_mode`):

- eager: the steps are called one after another from Python;
- graphs: the decode step is captured once into a CUDA graph (a static token, a static position that the
  graph itself advances, and the cache updated in place) and replayed per token, the way serving
  stacks run decode (the VLM components replay each prefill stage from its own graph: effprof/components/vlm.py);
- compile: the decode step is `torch.compile`d (its first call is made before timing).

`TokenClock` stamps the device timeline after the prefill and after every decode step when armed, so a
tracker can report time to first token and time per output token measured, never derived.
"""
from __future__ import annotations

from typing import Any, Callable

import torch


class TokenClock:
    """CUDA events (or perf_counter stamps on CPU) at the start of a generation and after each token."""

    def __init__(self, device: torch.device):
        self.device = device
        self.armed = False
        self.stamps: list[Any] = []

    def mark(self) -> None:
        if not self.armed:
            return
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.stamps.append(event)
        else:
            import time

            self.stamps.append(time.perf_counter())

    def intervals_ms(self) -> list[float]:
        """[start -> first token, first -> second token, ...] of the last armed generation."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return [a.elapsed_time(b) for a, b in zip(self.stamps, self.stamps[1:])]
        return [(b - a) * 1e3 for a, b in zip(self.stamps, self.stamps[1:])]


class Generator:
    """Greedy decoding of `new_tokens` tokens (the first from the prefill), in the run's execution mode."""

    def __init__(self, prefill: Callable[[tuple], torch.Tensor], step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 new_tokens: int, exec_mode: str, device: torch.device,
                 set_length: Callable[[int], None] = lambda n: None):
        """`set_length(n)` puts the cache at n tokens (the graph's warm-up and capture run the step too)."""
        self.prefill, self.step, self.new_tokens = prefill, step, new_tokens
        self.set_length = set_length
        self.exec_mode, self.device = exec_mode, device
        self.clock = TokenClock(device)
        self._graph = None
        self._compiled = None

    def first_token(self, inputs: tuple) -> torch.Tensor:
        return self.prefill(inputs)[:, -1].argmax(dim=-1, keepdim=True)

    def decode_tokens(self, token: torch.Tensor, start: int, count: int) -> list[torch.Tensor]:
        """`count` greedy tokens after `token`, the first at position `start`."""
        out = []
        if self.exec_mode == "graphs":
            replay, static_token, position = self._graphed(token)
            static_token.copy_(token)
            position.fill_(start)
            self.set_length(start)
            for _ in range(count):
                replay()
                out.append(static_token.clone())
                self.clock.mark()
            return out
        step = self._compiled_step() if self.exec_mode == "compile" else self._eager_step
        position = torch.full((1, 1), start, dtype=torch.long, device=token.device)
        for _ in range(count):
            token = step(token, position)
            position = position + 1
            out.append(token)
            self.clock.mark()
        return out

    def __call__(self, inputs: tuple, prompt_len: int) -> torch.Tensor:
        """Generated token ids (B, new_tokens)."""
        if self.exec_mode == "graphs" and self._graph is None:
            # the capture's warm-up runs the step for real, writing the cache (LLaVA's positions 0 and 1,
            # Cobra's state): capture before this generation's prefill, which then rewrites what it needs
            self._graphed(self.first_token(inputs))
        self.clock.stamps = []
        self.clock.mark()
        token = self.first_token(inputs)
        self.clock.mark()
        rest = self.decode_tokens(token, prompt_len, self.new_tokens - 1)
        return torch.cat([token, *rest], dim=1)

    # -- the decode step in each mode ---------------------------------------------------------------------
    def _eager_step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        return self.step(token, position)[:, -1].argmax(dim=-1, keepdim=True)

    def _compiled_step(self):
        if self._compiled is None:
            self._compiled = torch.compile(self._eager_step)
        return self._compiled

    def _graphed(self, token: torch.Tensor):
        """Capture one decode step that reads `static_token` at `position`, writes the next token back into
        `static_token` and advances `position`: replaying it N times decodes N tokens."""
        if self._graph is None:
            from effprof.measure.modes import graphed_callable

            static_token = token.clone()
            position = torch.zeros((1, 1), dtype=torch.long, device=token.device)

            def step_in_place():
                static_token.copy_(self._eager_step(static_token, position))
                position.add_(1)
                return static_token

            replay = graphed_callable(step_in_place, None, self.device, warmup_calls=2)
            self._graph = (replay, static_token, position)
        return self._graph


def greedy_mamba(model, prompt: torch.Tensor, n_tokens: int, decode_backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A MambaLM's greedy generation on `decode_backend` (the check of a decode kernel against the op-by-op
    step): prefill `prompt`, then `n_tokens` steps feeding back the argmax. Returns (tokens (batch, n),
    logits (batch, n, vocab)) of the steps."""
    model.set_backends(decode_backend=decode_backend)
    cache = model.allocate_cache(prompt.shape[0])
    with torch.no_grad():
        logits = model(prompt, cache, num_last_tokens=1)
        tokens, all_logits = [], []
        for _ in range(n_tokens):
            token = logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(token)
            logits = model.step(token, cache)
            all_logits.append(logits[:, -1])
    return torch.cat(tokens, 1), torch.stack(all_logits, 1)
