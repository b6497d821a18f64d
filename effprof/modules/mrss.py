"""Multi-resolution selective scanning (MRSS): a full-resolution Mamba block plus a low-resolution one, gated.

For x (batch, T, D):

    y_high = Mamba_high(x)
    y_low  = up(Mamba_low(down(x)))          down/up change the length by the ratio r
    g      = σ(W_g x + b_g)                  W_g: Linear(D, 1), one gate per token
    y      = g · y_low + (1 − g) · y_high    (computed as torch.lerp(y_high, y_low, g))

The gate is one scalar per token (Linear(D, 1)), the literal reading of "g = σ(W_g x) per token"; it costs
2·T·D FLOPs per sequence and is counted. Both branches always run: MRSS costs the full-resolution block
plus the low-resolution one, so it can never be cheaper than the single full-resolution block it wraps.

Downsampling by r along time (T is first padded to a multiple of r by repeating the last token; the
number of added tokens is `padded_tokens(T)` and the output is cropped back to T):
- "avg": mean of each window of r tokens (average pooling, stride r);
- "strided": every r-th token, x[:, ::r] (the first token of each window);
- "learned": a depthwise Conv1d(D, D, kernel r, stride r, no bias), initialised to the average (1/r),
  so before training it equals "avg" (its 2·T·D FLOPs are counted).
Upsampling back to T: "nearest" repeats each low-resolution output r times (repeat_interleave);
"linear" is F.interpolate(mode="linear", align_corners=False).

Causality: only strided + nearest (or r = 1) is causal. Token t then receives the low branch's output
for window ⌊t/r⌋, which has seen tokens up to ⌊t/r⌋·r ≤ t. Average or learned pooling mixes every token of a window
into its summary, so token t sees up to r − 1 future tokens; linear upsampling interpolates with the next
window's output, which sees further ahead. `is_causal` says which case a module is.

Streams (`streams=True`, CUDA only): the low branch runs on a side CUDA stream while the high branch
and the gate run on the current stream. The side stream first waits for the current one (x is ready),
the current one waits for the side stream before the fusion, and `record_stream` tells the caching
allocator that x is used on the side stream and the low branch's output on the current one, so no
memory is reused early. Whether the two branches overlap is what a measurement shows; the output is
the same as without streams. On a CPU input, `streams=True` raises (never ignored silently).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DOWNSAMPLE = ("avg", "strided", "learned")
UPSAMPLE = ("nearest", "linear")


def is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def pad_to_multiple(x: Tensor, ratio: int) -> Tensor:
    """Pad (batch, T, D) along time to a multiple of `ratio` by repeating the last token."""
    extra = (-x.shape[1]) % ratio
    if extra == 0:
        return x
    return torch.cat([x, x[:, -1:].expand(-1, extra, -1)], dim=1)


class MRSS(nn.Module):
    """Two Mamba branches (full and 1/r resolution) fused by a per-token gate: (batch, T, D) -> (batch, T, D).

    `make_block()` builds one branch's block (default: `MambaBlock(d_model, d_state, scan_backend=...)`);
    the high and low branches get independent random weights.
    """

    def __init__(self, d_model: int, ratio: int, downsample: str = "avg", upsample: str = "nearest",
                 d_state: int = 16, scan_backend: str = "ref", conv_backend: str = "ref", streams: bool = False,
                 make_block: Callable[[], nn.Module] | None = None, device=None, dtype=None):
        super().__init__()
        if not is_power_of_two(ratio):
            raise ValueError(f"ratio must be a power of two (1, 2, 4, 8, ...), got {ratio}")
        if downsample not in DOWNSAMPLE or upsample not in UPSAMPLE:
            raise ValueError(f"downsample must be one of {DOWNSAMPLE} and upsample one of {UPSAMPLE}")
        if make_block is None:
            from effprof.modules.mamba import MambaBlock

            def make_block():
                return MambaBlock(d_model, d_state=d_state, scan_backend=scan_backend, conv_backend=conv_backend,
                                  device=device, dtype=dtype)
        self.ratio, self.downsample_mode, self.upsample_mode, self.streams = ratio, downsample, upsample, streams
        self.high = make_block()
        self.low = make_block()
        self.gate = nn.Linear(d_model, 1, device=device, dtype=dtype)
        self.down_conv = None
        if downsample == "learned":
            self.down_conv = nn.Conv1d(d_model, d_model, ratio, stride=ratio, groups=d_model, bias=False,
                                       device=device, dtype=dtype)
            nn.init.constant_(self.down_conv.weight, 1.0 / ratio)
        self._side_streams: dict[torch.device, torch.cuda.Stream] = {}

    @property
    def is_causal(self) -> bool:
        return self.ratio == 1 or (self.downsample_mode == "strided" and self.upsample_mode == "nearest")

    def padded_tokens(self, seq_len: int) -> int:
        """Tokens added to reach a multiple of the ratio (0 when r divides T)."""
        return (-seq_len) % self.ratio

    def down(self, x: Tensor) -> Tensor:
        """(batch, T, D) with r | T -> (batch, T / r, D)."""
        r = self.ratio
        if r == 1:
            return x
        if self.downsample_mode == "avg":
            return x.unflatten(1, (-1, r)).mean(dim=2)
        if self.downsample_mode == "strided":
            return x[:, ::r]
        return self.down_conv(x.transpose(1, 2)).transpose(1, 2)

    def up(self, y: Tensor, length: int) -> Tensor:
        """(batch, T / r, D) -> (batch, length, D); length = r · (T / r)."""
        if self.ratio == 1:
            return y
        if self.upsample_mode == "nearest":
            return y.repeat_interleave(self.ratio, dim=1)
        return F.interpolate(y.transpose(1, 2), size=length, mode="linear", align_corners=False).transpose(1, 2)

    def low_branch(self, x: Tensor) -> Tensor:
        """up(Mamba_low(down(x))) cropped to x's length: (batch, T, D)."""
        padded = pad_to_multiple(x, self.ratio)
        return self.up(self.low(self.down(padded)), padded.shape[1])[:, :x.shape[1]]

    def fuse(self, x: Tensor, y_high: Tensor, y_low: Tensor) -> Tensor:
        gate = torch.sigmoid(self.gate(x))                       # (batch, T, 1)
        return torch.lerp(y_high, y_low, gate.to(y_high.dtype))  # y_high + g·(y_low − y_high)

    def branches(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(y_high, up(y_low)) without the gate, both (batch, T, D); for fidelity figures."""
        return self.high(x), self.low_branch(x)

    def forward(self, x: Tensor) -> Tensor:
        if self.streams:
            return self._forward_two_streams(x)
        return self.fuse(x, self.high(x), self.low_branch(x))

    def _forward_two_streams(self, x: Tensor) -> Tensor:
        if x.device.type != "cuda":
            raise ValueError("MRSS streams=True needs a CUDA input (branches on separate CUDA streams)")
        main = torch.cuda.current_stream(x.device)
        side = self._side_streams.get(x.device)
        if side is None:
            side = self._side_streams[x.device] = torch.cuda.Stream(x.device)
        side.wait_stream(main)                  # x (and the weights) are ready before the low branch reads them
        with torch.cuda.stream(side):
            y_low = self.low_branch(x)
        x.record_stream(side)                   # x is read on the side stream: keep its memory until it is done
        y_high = self.high(x)
        main.wait_stream(side)                  # the fusion reads y_low
        y_low.record_stream(main)               # y_low was allocated on the side stream, used and freed on main
        return self.fuse(x, y_high, y_low)
