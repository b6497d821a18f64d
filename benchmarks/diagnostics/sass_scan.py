#!/usr/bin/env python3
"""Static cost of the Gluon scan kernels on sm_90a, without a GPU: registers, spills, shared memory and
the SASS instruction mix of the chunk loop, per (channel, state, step) element.

    python benchmarks/diagnostics/sass_scan.py lanes --states 4 --chunk 32 --sub 8 --warps 4
    python benchmarks/diagnostics/sass_scan.py gluon --chunk 32 --warps 4

Compiles with triton's own ptxas (GluonASTSource, the launch's 16-byte-aligned specialisation, bf16
inputs, D, z, bias, softplus, fast math, d_state 16), disassembles with the wheel's cuobjdump, and
counts the instructions of the longest loop (the chunk loop: the block between a label and the
backward branch to it). Elements per loop iteration: the lanes kernel's CHUNK * S per thread, the
Gluon kernel's 8 * 16 (8 steps, 16 states).
"""
from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

TYPES = {"u_ptr": "*bf16", "delta_ptr": "*bf16", "A_ptr": "*fp32", "B_ptr": "*bf16", "C_ptr": "*bf16",
         "D_ptr": "*fp32", "z_ptr": "*bf16", "bias_ptr": "*fp32", "y_ptr": "*bf16", "last_ptr": "*fp32",
         "hend_ptr": "*fp32", "dsum_ptr": "*fp32", "d_inner": "i32", "L": "i32", "T": "i32", "K": "i32",
         **{f"s{t}_{a}": "i32" for t in "udzy" for a in "bdt"}}
# The lanes kernel's time strides: 1 (contiguous (batch, d_inner, L), the launch specialises a stride of 1 to
# a constant) unless the caller passes channel-last strides (`lanes_constants(channel_last=True)`).
CONTIGUOUS_TIME = {f"s{t}_t": 1 for t in "udzy"}


def lanes_constants(channel_last: bool = False, mode: int = 0, channel_stride_one: bool = False) -> dict:
    """The constexprs the lanes kernel takes besides its tuning: time strides (contiguous, or channel-last
    as a run-time i32 argument) and MODE (0 whole sequence, 1/2 the time split's two launches)."""
    out = {"MODE": mode, "TP": 1, "IO_VD": 0, "IO_TD": 1, "IO_WD": 1}
    if not channel_last:
        out.update(CONTIGUOUS_TIME)
    elif channel_stride_one:  # a Mamba block's views: channel stride 1, which the launch specialises too
        out.update({f"s{t}_d": 1 for t in "udzy"})
    return out


def compile_kernel(kernel, constants: dict, num_warps: int, maxnreg: int | None = None):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    names = kernel.arg_names
    if "MODE" in names and "MODE" not in constants:
        constants = {**lanes_constants(), **constants}
    signature = {n: "constexpr" if n in constants else TYPES.get(n, "constexpr") for n in names}
    source = GluonASTSource(fn=kernel, signature=signature,
                            constexprs={(names.index(n),): v for n, v in constants.items() if n in names},
                            attrs={(names.index(n),): [["tt.divisibility", 16]] for n in TYPES
                                   if n in names and n not in constants})
    options = {"num_warps": num_warps, **({"maxnreg": maxnreg} if maxnreg else {})}
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def sass_of(compiled) -> tuple[str, str]:
    import triton
    bindir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        sass = subprocess.run([str(bindir / "cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True).stdout
        usage = subprocess.run([str(bindir / "cuobjdump"), "-res-usage", str(cubin)], capture_output=True,
                               text=True).stdout
    return sass, usage


def loop_mix(sass: str) -> tuple[int, collections.Counter]:
    """Instructions of the largest loop: from a branch target to the last backward branch to it."""
    lines = [(int(m.group(1), 16), m.group(2)) for m in
             (re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line) for line in sass.splitlines()) if m]
    best = (0, 0, 0)
    for i, (addr, ins) in enumerate(lines):
        m = re.search(r"BRA\s+(?:`\(\.L_x_\d+\)|0x([0-9a-f]+))", ins)
        target = re.search(r"0x([0-9a-f]+)", ins) if "BRA" in ins else None
        if not target:
            continue
        t = int(target.group(1), 16)
        if t < addr:
            j = next(k for k, (a, _) in enumerate(lines) if a >= t)
            if i - j > best[0]:
                best = (i - j + 1, j, i)
    _, j, i = best
    mix = collections.Counter()
    for _, ins in lines[j:i + 1]:
        op = re.sub(r"^@!?U?P\w+\s+", "", ins).split()[0].split(".")[0]
        mix[op] += 1
    return best[0], mix


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kernel", choices=["lanes", "gluon"])
    parser.add_argument("--states", type=int, default=4, help="lanes: states per thread")
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--sub", type=int, default=8, help="lanes: steps per in-thread tile")
    parser.add_argument("--warps", type=int, default=4)
    parser.add_argument("--rows", type=int, default=1, help="lanes: channels per thread")
    parser.add_argument("--no-pad", action="store_true", help="lanes: plain row-major shared memory")
    parser.add_argument("--maxnreg", type=int, default=None, help="register cap for ptxas")
    parser.add_argument("--lane-order", type=int, default=0, help="lanes: 0 lanes of a channel consecutive, "
                        "1 channels on the lowest lane bits, 2 one state group per warp")
    parser.add_argument("--poly-every", type=int, default=0)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--time-parts", type=int, default=1, help="lanes: time parts per sub-block (across lanes)")
    parser.add_argument("--io-channel", action="store_true", help="lanes: channel-fast phase-1/3 layout")
    parser.add_argument("--channel-last", action="store_true", help="lanes: time strides as run-time arguments")
    parser.add_argument("--mode", type=int, default=0, choices=[0, 1, 2], help="lanes: 0 the whole sequence, 1 and 2 "
                        "the time split's first launch (chunk end states) and last (y from entering states)")
    parser.add_argument("--sass", action="store_true", help="print the loop's SASS")
    args = parser.parse_args()
    import triton
    n_pad = triton.next_power_of_2(args.d_state)
    common = dict(N=args.d_state, N_PAD=n_pad, HAS_D=True, HAS_Z=True, HAS_DELTA_BIAS=True, DELTA_SOFTPLUS=True,
                  CHUNK=args.chunk, EVEN_L=True, EVEN_D=True, FAST_MATH=True, POLY_EVERY=args.poly_every,
                  num_warps=args.warps)
    if args.kernel == "lanes":
        from effprof.ops.selective_scan_lanes import _scan_lanes_kernel, io_geometry, lanes_geometry, time_parts_of
        n_pad, s, bd = lanes_geometry(args.d_state, args.states, args.warps, args.rows, args.time_parts)
        tp = time_parts_of(n_pad // s, args.time_parts)
        vd, td, wd = io_geometry(bd, args.chunk, args.warps) if args.io_channel else (0, 1, 1)
        constants = {**lanes_constants(args.channel_last, args.mode, channel_stride_one=True), **common, "S": s,
                     "SUB": min(args.sub, args.chunk),
                     "ROWS": args.rows, "PAD": not args.no_pad, "LANE_ORDER": args.lane_order, "TP": tp,
                     "IO_VD": vd, "IO_TD": td, "IO_WD": wd}
        compiled = compile_kernel(_scan_lanes_kernel, constants, args.warps, args.maxnreg)
        elements = args.chunk * s * args.rows // tp
    else:
        from effprof.ops.selective_scan_gluon import _scan_gluon_kernel
        compiled = compile_kernel(_scan_gluon_kernel, common, args.warps)
        elements = 8 * args.d_state
    sass, usage = sass_of(compiled)
    regs = re.search(r"REG:(\d+)", usage).group(1)
    stack = re.search(r"STACK:(\d+)", usage).group(1)
    shared = re.search(r"SHARED:(\d+)", usage).group(1)
    count, mix = loop_mix(sass)
    if args.sass:
        print(sass)
    top = ", ".join(f"{op} {n / elements:.2f}" for op, n in mix.most_common(14))
    print(f"{args.kernel} {vars(args)}: {regs} registers, stack {stack} B, shared {shared} B; "
          f"loop {count} instructions / {elements} elements = {count / elements:.2f} per element")
    print(f"  per element: {top}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
