"""VMamba's cross-scan and cross-merge: a 2-D feature map unrolled into K 1-D sequences and folded back.

Liu et al. 2024, "VMamba: Visual State Space Model" (NeurIPS 2024), §3 "2D-Selective-Scan": SS2D
unrolls the (H, W) map along K routes, scans each with its own selective-scan parameters and sums the
K outputs back at the pixels they came from. Layouts are channel-first:

    cross_scan(x, mode):   x (batch, C, H, W)      -> xs (batch, K, C, L)   L = H·W
    cross_merge(ys, mode): ys (batch, K, C, H, W)  -> y  (batch, C, L)      (or ys (batch, K, C, L) with H, W)

Modes (`SCAN_MODES`), the number of sequences K each one scans, and what they are:

- "cross4" (K = 4, VMamba's cross scan, `scans=0`): row-major, column-major, and both reversed.
- "bi2"    (K = 2): row-major and its reverse. A true two-direction scan: half the sequences of cross4.
- "uni1"   (K = 1): one row-major raster scan.
- "v052d"  (K = 4): VMamba's own "bidirectional" forward type (`v052d`, `scans=2` in its csm_triton.py):
  row-major twice and reversed twice. Two directions, but four sequences: the cost of cross4.
- "v051d"  (K = 4): VMamba's "unidirectional" type (`v051d`, `scans=1`): row-major four times.

`cross_scan`/`cross_merge` are plain tensor ops (flip, transpose, stack). `cross_scan_ref`/
`cross_merge_ref` are the definitions: a gather and a scatter-add through `scan_order`, the (K, L) table
of which pixel (row-major index) each direction visits at each step.
"""
from __future__ import annotations

import torch
from torch import Tensor

# mode -> (K, the directions of its K sequences); "row"/"col" = row-/column-major, "-rev" = reversed
SCAN_MODES: dict[str, tuple[str, ...]] = {
    "cross4": ("row", "col", "row-rev", "col-rev"),
    "bi2": ("row", "row-rev"),
    "uni1": ("row",),
    "v052d": ("row", "row", "row-rev", "row-rev"),
    "v051d": ("row", "row", "row", "row"),
}


def scan_directions(mode: str) -> tuple[str, ...]:
    """The directions of a mode's K sequences (see the module docstring)."""
    try:
        return SCAN_MODES[mode]
    except KeyError:
        raise ValueError(f"unknown scan mode {mode!r}; choose from {', '.join(SCAN_MODES)}") from None


def num_sequences(mode: str) -> int:
    """K: how many sequences a mode scans per image (what the scan's cost is proportional to)."""
    return len(scan_directions(mode))


def distinct_directions(mode: str) -> int:
    """How many different routes a mode's K sequences follow (v052d: 2, though K = 4)."""
    return len(set(scan_directions(mode)))


# ---------------------------------------------------------------------------------------------------
# Reference: index tables
# ---------------------------------------------------------------------------------------------------
def scan_order(height: int, width: int, mode: str, device=None) -> Tensor:
    """(K, L) long tensor: entry [k, t] is the row-major pixel index (h·W + w) direction k visits at step t."""
    raster = torch.arange(height * width, device=device)
    column = raster.view(height, width).t().reshape(-1)       # step t of the column-major walk
    routes = {"row": raster, "col": column, "row-rev": raster.flip(0), "col-rev": column.flip(0)}
    return torch.stack([routes[d] for d in scan_directions(mode)])


def cross_scan_ref(x: Tensor, mode: str = "cross4") -> Tensor:
    """Definition of `cross_scan`: xs[:, k, :, t] = x.flatten(2)[:, :, scan_order[k, t]]."""
    batch, channels, height, width = x.shape
    order = scan_order(height, width, mode, x.device)
    flat = x.reshape(batch, channels, height * width)
    return torch.stack([flat[:, :, route] for route in order], dim=1)


def cross_merge_ref(ys: Tensor, mode: str = "cross4", height: int | None = None, width: int | None = None) -> Tensor:
    """Definition of `cross_merge`: each direction's output scatter-added back to the pixel it came from."""
    ys, height, width = _as_sequences(ys, height, width)
    batch, k, channels, length = ys.shape
    order = scan_order(height, width, mode, ys.device)
    if k != len(order):
        raise ValueError(f"cross_merge: mode {mode!r} has K={len(order)} sequences, got {k}")
    y = ys.new_zeros(batch, channels, length)
    for route, seq in zip(order, ys.unbind(1)):
        y.index_add_(2, route, seq)
    return y


# ---------------------------------------------------------------------------------------------------
# Plain tensor ops (what the models run)
# ---------------------------------------------------------------------------------------------------
def cross_scan(x: Tensor, mode: str = "cross4", direction_first: bool = False) -> Tensor:
    """x (batch, C, H, W) -> (batch, K, C, H·W): the K sequences of `mode` (flips and one transpose).

    `direction_first`: return (K, batch, C, H·W) instead, in which each direction is contiguous."""
    batch, channels, height, width = x.shape
    length = height * width
    directions = scan_directions(mode)
    row = x.reshape(batch, channels, length)
    routes = {"row": row, "row-rev": None, "col": None, "col-rev": None}
    if "row-rev" in directions:
        routes["row-rev"] = row.flip(-1)
    if "col" in directions or "col-rev" in directions:
        routes["col"] = x.transpose(2, 3).reshape(batch, channels, length)
        routes["col-rev"] = routes["col"].flip(-1)
    return torch.stack([routes[d] for d in directions], dim=0 if direction_first else 1)


def cross_merge(ys, mode: str = "cross4", height: int | None = None, width: int | None = None) -> Tensor:
    """ys (batch, K, C, H, W), or (batch, K, C, L) or a list of K (batch, C, L) with height/width ->
    y (batch, C, L), row-major.

    Each sequence is put back in row-major order (reversed ones flipped, column-major ones transposed)
    and the K results are summed, as VMamba's cross_merge_fn does.
    """
    if isinstance(ys, (list, tuple)):
        if height is None or width is None:
            raise ValueError("cross_merge: a list of sequences needs height and width")
        seqs = list(ys)
    else:
        ys, height, width = _as_sequences(ys, height, width)
        seqs = list(ys.unbind(1))
    batch, channels, length = seqs[0].shape
    directions = scan_directions(mode)
    if len(seqs) != len(directions):
        raise ValueError(f"cross_merge: mode {mode!r} has K={len(directions)} sequences, got {len(seqs)}")
    total = None
    col_sum = None
    for direction, seq in zip(directions, seqs):
        if direction.endswith("-rev"):
            seq = seq.flip(-1)
        if direction.startswith("col"):  # sum column-major outputs first: one transpose for both
            col_sum = seq if col_sum is None else col_sum + seq
            continue
        total = seq if total is None else total + seq
    if col_sum is not None:
        back = col_sum.reshape(batch, channels, width, height).transpose(2, 3).reshape(batch, channels, length)
        total = back if total is None else total + back
    return total


def _as_sequences(ys: Tensor, height: int | None, width: int | None) -> tuple[Tensor, int, int]:
    if ys.dim() == 5:
        batch, k, channels, height, width = ys.shape
        return ys.reshape(batch, k, channels, height * width), height, width
    if ys.dim() != 4 or height is None or width is None:
        raise ValueError("cross_merge: give ys as (batch, K, C, H, W), or (batch, K, C, L) with height and width")
    if ys.shape[-1] != height * width:
        raise ValueError(f"cross_merge: L={ys.shape[-1]} is not height·width={height * width}")
    return ys, height, width
