"""The declaration of every record column and of the table's columns (see `effprof.core.columns`).

`TABLE` holds one line per column, `name | unit | filled by | meaning`, in sections by filler: the runner, each
tracker (`effprof/trackers/NAME.py`), the launchers, the comparison, the components' facts (`Built.info` and
`Built.extras`) and the studies. A new column is one line here next to the code that fills it; a test
(tests/test_columns.py) runs real rows and refuses any key that is not declared. `View` (a column of the
table) is declared here too; `effprof.core.columns` reads this table and answers questions about it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class View:
    """One column of the table. `key` is its `--columns` name; `sources` the record keys it shows (the first
    is the one whose presence decides whether a row has a value); `header` its header (a newline breaks it),
    `brief_header` a narrower spelling for the brief table; `fmt` how report.table writes a cell (a format
    name: num, num4, int, pct0, pct1, fixed2, fixed3, fixed4, text, or a renderer named after the view);
    `shown`: `brief` = in the brief table, `present` = in the brief table when a row has a value (the
    component or flag named in `when` exists for it), `full` = only with `--columns full` or by key;
    `priority`: where the terminal is too narrow, the views of the highest priority number go first."""

    key: str
    header: str
    sources: tuple[str, ...]
    fmt: str = "num"
    shown: str = "full"
    when: str = ""
    priority: int = 2
    brief_header: str | None = None


# The CSV's first columns, in this order; every other key follows in first-seen order.
LEADING = ("label", "component", "params", "batch", "dtype", "device", "unit", "status",
           "latency_ms_median", "latency_ms_p10", "latency_ms_p90", "latency_cv", "throughput_per_s",
           "peak_mem_mib", "weights_mib", "params_total", "params_trainable", "gflops", "tflops_per_s")

TABLE = """
# --- the row: what was measured (runner.base_record) ---
label | id | runner | the row's name (a profile's label, else the component)
component | id | runner | the registered component (effprof list)
params | text | runner | the component parameters set explicitly, name=value,... (param_* holds every value)
batch | count | runner | samples per call (--batch)
dtype | id | runner | bf16, fp16 or fp32 (--dtype)
device | id | runner | cpu, cuda or meta (meta: counted, not timed)
unit | id | runner | what an item is: img, tok or seq (throughput_per_s counts these)
status | id | runner | ok, refused, error or OOM (a failed row keeps its place and says why in error)
error | text | runner | why the row did not complete (one line)
traceback | text | runner | the whole traceback of a failed row (--debug)
param_<name> | param | runner | the value of component parameter <name>, set or default (effprof list COMPONENT)
timing_mode | id | runner | warm (inputs reused) or cold (--cold: input sets rotated, L2 flushed on CUDA)
seed | count | runner | the seed of weights and inputs (--seed)
warmup_s | s | runner | warm-up time asked for (--warmup)
min_time_s | s | runner | least timed time asked for (--min-time)
max_time_s | s | runner | most timed time asked for (--max-time; empty = none)
max_cv | fraction | runner | the CV at which timing may stop early (--max-cv)
input_sets | count | runner | input sets rotated between calls (cold timing), else 1
wall_s | s | runner | wall time of the whole row (build, counting, timing, trackers)
command_line | text | cli | the command that produced the row
# --- the environment (effprof.measure.env) ---
device_name | text | runner (env) | the GPU's name, or the CPU's model on cpu
device_type | id | runner (env) | cpu, cuda or meta
cpu_model | text | runner (env) | the host CPU's model name
torch_num_threads | count | runner (env) | torch's intra-op threads
torch_version | id | runner (env) | torch version
cuda_version | id | runner (env) | CUDA version torch was built with (empty on cpu)
driver_version | id | runner (env) | NVIDIA driver version (empty on cpu)
transformers_version | id | runner (env) | transformers version, if installed
triton_version | id | runner (env) | triton version, if installed
python_version | id | runner (env) | Python version
effprof_version | id | runner (env) | effprof version
timestamp_utc | UTC | runner (env) | when the row was measured
# --- timing (runner.timing_fields, effprof.measure.timing) ---
latency_ms_median | ms | runner (timing) | median time of one call over the timed samples (the latency)
latency_ms_p10 | ms | runner (timing) | 10th percentile of the per-call samples
latency_ms_p90 | ms | runner (timing) | 90th percentile of the per-call samples
latency_ms_mean | ms | runner (timing) | mean of the per-call samples
latency_cv | fraction | runner (timing) | coefficient of variation std/mean of the samples (0.02 = 2%)
latency_unsteady | bool | runner (timing) | True when latency_cv is above 0.05; ratios against such a row carry that
    noise
latency_ms_ci95_low | ms | runner (timing) | lower end of the 95% confidence interval of the median (order statistics)
latency_ms_ci95_high | ms | runner (timing) | upper end of the 95% confidence interval of the median
latency_samples_ms | list | runner (timing) | the raw per-call samples (JSON only)
n_calls | count | runner (timing) | calls timed (warm-up excluded)
calls_per_block | count | runner (timing) | calls between two clock reads (blocked timing)
calls_per_sample | count | runner (timing) | calls averaged into one sample
timing_method | text | runner (timing) | the clock: cuda-events-blocked or perf_counter-blocked
timing_stop | id | runner (timing) | why timing stopped: steady, precise, min-time, cap or max-time
items_per_call | count | runner (timing) | items (unit) one call processes: batch x items per sample
throughput_per_s | items/s | runner (timing) | items_per_call / median latency
phase_<phase>_s | s | runner | wall seconds of a phase of the row (build, count, warmup, timing, ...)
exec_mode | text | runner | eager, graphs, compile or compile+graphs (train- for --train; by the component if it
    applies it)
compile_s | s | runner | torch.compile time of the first call (never inside the latency)
peak_mem_note | text | runner | why the peak memory is missing or what it leaves out
# --- tracker params ---
params_total | count | tracker params | parameters of the component (all)
params_trainable | count | tracker params | parameters that require grad (LoRA's frozen base excluded)
weights_mib | MiB | tracker params | bytes of parameters and buffers
# --- tracker flops_bytes (effprof.measure.bytes) ---
gflops | GFLOP | tracker flops_bytes | FLOPs of one call for the whole batch, 2 x MAC (FlopCounterMode + effprof's
    formulas); --train: forward+backward
moved_mib_lower_bound | MiB | tracker flops_bytes | bytes one call must move at least (each input read once, each
    output written once; indexed ops only their rows: a lookup's embedding rows, a KV cache's new slot)
tflops_per_s | TFLOP/s | runner (timing) | gflops / median latency
# --- tracker flop_coverage (effprof.measure.coverage) ---
flop_coverage | fraction | tracker flop_coverage | share of the call's time in ops that have a FLOP formula
flop_coverage_method | text | tracker flop_coverage | what time the share is of (kernel time on cuda, aten op CPU time
    on cpu)
flop_coverage_note | text | tracker flop_coverage | why the coverage is missing
flop_uncovered_top | text | tracker flop_coverage | the op without a FLOP formula that takes the most time, with its
    share
flop_coverage_low | bool | cli | True when flop_coverage is below --min-flop-coverage
# --- tracker paper_flops ---
paper_gmacs_per_img | GMAC | tracker paper_flops | the vision papers' "GFLOPs": fvcore-style MACs per image
    (comparable with VMamba's 4.9G)
paper_gmacs_convention | text | tracker paper_flops | what paper_gmacs_per_img counts and leaves out
paper_gmacs_note | text | tracker paper_flops | why paper_gmacs_per_img is missing
# --- tracker training (--train, effprof.measure.training) ---
train_exec | text | runner | how a training step ran (one CUDA graph per step under --graphs, else eager or compiled)
train | bool | tracker training | True: a call is one training step (forward, loss, backward, optimizer step)
train_optimizer | id | tracker training | the optimizer (--optimizer)
train_lr | fraction | tracker training | its learning rate
train_loss | text | tracker training | the loss the step minimises
grad_checkpointing | bool | tracker training | activation checkpointing on (--grad-checkpointing)
params_frozen | count | tracker training | parameters that do not require grad
flops_scope | text | tracker training | what gflops counts (forward+backward; optimizer updates count 0)
gflops_forward | GFLOP | tracker training | FLOPs of the forward alone
train_weights_mib | MiB | tracker training | weights during the step
train_grads_mib | MiB | tracker training | gradients during the step
train_optimizer_mib | MiB | tracker training | optimizer state
train_activations_mib | MiB | tracker training | activations the forward allocates (cuda)
train_saved_activations_mib | MiB | tracker training | tensors saved for backward (cpu)
train_inputs_mib | MiB | tracker training | the inputs of the step
train_peak_mib | MiB | tracker training | the step's allocator peak (cuda)
train_memory_method | text | tracker training | how the split was measured
# --- tracker peak_memory ---
peak_mem_mib | MiB | tracker peak_memory | peak memory above what was allocated before the timed calls (activations,
    workspaces)
peak_mem_method | text | tracker peak_memory | CUDA allocator peak, or the process's resident-set growth on cpu
peak_mem_below_resolution | bool | tracker peak_memory | True when the cpu peak is below what the method can resolve
peak_mem_resolution_mib | MiB | tracker peak_memory | the smallest peak the cpu method resolves
# --- tracker nvml (CUDA; effprof.measure.nvml) ---
gpu_name | text | tracker nvml | the GPU's name (NVML)
sm_clock_mhz_median | MHz | tracker nvml | median SM clock during the timed region
sm_clock_mhz_min | MHz | tracker nvml | lowest SM clock during the timed region
mem_clock_mhz_median | MHz | tracker nvml | median memory clock
power_w_median | W | tracker nvml | median board power
temp_c_max | degC | tracker nvml | hottest GPU temperature
energy_j | J | tracker nvml | board energy over the timed region
energy_j_per_item | J/item | tracker nvml | energy_j per item, idle power included (as Zeus and the ML.ENERGY
    leaderboard)
energy_method | id | tracker nvml | energy-counter or power-integration
idle_power_w | W | tracker nvml | idle board power measured before the first timed region
idle_power_method | text | tracker nvml | when idle power was measured
energy_above_idle_j_per_item | J/item | tracker nvml | energy per item minus idle power x the region's time
throttled | bool | tracker nvml | True when NVML reported a clock throttle reason during the region
throttle_reasons | text | tracker nvml | the reasons reported
nvml_samples | count | tracker nvml | NVML samples taken
nvml_region_s | s | tracker nvml | seconds sampled
nvml_note | text | tracker nvml | why NVML figures are missing
# --- tracker crosscheck (--flops-crosscheck) ---
fvcore_gmacs | GMAC | tracker crosscheck | fvcore's count of the same call (MACs; no attention matmuls)
fvcore_note | text | tracker crosscheck | fvcore's convention, or why it is missing
thop_gmacs | GMAC | tracker crosscheck | thop's count (MACs of module hooks)
thop_note | text | tracker crosscheck | thop's convention, or why it is missing
# --- tracker roofline (effprof.measure.roofline) ---
achieved_gb_per_s | GB/s | tracker roofline | moved bytes lower bound / latency: a lower bound on the bandwidth
    achieved
arithmetic_intensity_flop_per_byte | count | tracker roofline | FLOPs / bytes moved (lower bound), FLOP per byte
ceilings_source | id | tracker roofline | the ceilings used: measured (effprof calibrate), datasheet or unknown
peak_tflops | TFLOP/s | tracker roofline | compute ceiling of the row's dtype (dense)
peak_gb_per_s | GB/s | tracker roofline | bandwidth ceiling
pct_of_compute_ceiling | % | tracker roofline | 100 x TFLOP/s / peak_tflops
pct_of_bandwidth_ceiling | % | tracker roofline | 100 x achieved_gb_per_s / peak_gb_per_s
compute_floor_ms | ms | tracker roofline | gflops / peak_tflops
memory_floor_ms | ms | tracker roofline | bytes / peak_gb_per_s
roofline_fraction | fraction | tracker roofline | larger floor / latency (1 = on the roof)
roofline_above | bool | tracker roofline | above the roof (fraction > ROOF_TOLERANCE): the counted FLOPs or bytes are
    more than reached the units or DRAM (data served from L2 across calls, or fused away by compiled code)
verdict | id | tracker roofline | compute, memory or overhead (latency above 10 x the larger floor)
# --- tracker utilization (MFU / MBU, effprof.measure.utilization) ---
mfu_datasheet_pct | % | tracker utilization | model FLOPs utilization: 100 x counted FLOPs of the call / latency / the
    dense datasheet peak of the dtype (never the sparse figure)
mfu_measured_pct | % | tracker utilization | the same against the measured matmul ceiling (effprof calibrate's cache)
mfu_convention | text | tracker utilization | the FLOPs, time and peaks MFU uses
mbu_datasheet_pct | % | tracker utilization | model bandwidth utilization of a decode step: 100 x bytes a step reads
    (weights + KV cache or SSM state) / time per output token / the datasheet bandwidth
mbu_measured_pct | % | tracker utilization | the same against the measured copy bandwidth (effprof calibrate's cache)
mbu_mib_per_token | MiB | tracker utilization | bytes one decode step moves (weights read once + KV cache or SSM
    state; counted), per step of the batch
mbu_convention | text | tracker utilization | the bytes, time and bandwidths MBU uses
utilization_note | text | tracker utilization | why MFU / MBU are missing
# --- tracker stages (a staged component's split) ---
stage_names | text | tracker stages | the stages in order, comma-separated
stage_<stage>_ms | ms | tracker stages | median time of stage <stage> (device timeline stamps between stages)
stage_<stage>_share | fraction | tracker stages | stage <stage>'s share of the stages' sum
stage_<stage>_params | count | tracker stages | parameters of the stage's module
stage_<stage>_gflops | GFLOP | tracker stages | FLOPs of the stage on the input it receives, 2 x MAC
stage_<stage>_moved_mib | MiB | tracker stages | bytes the stage moves at least
stage_<stage>_peak_mem_mib | MiB | tracker stages | the stage's peak memory run alone (cuda)
stages_sum_ms | ms | tracker stages | sum of the stages' medians
stages_sum_over_whole | x | tracker stages | stages_sum_ms / the whole call's median latency (1 = the parts add up)
stage_method | text | tracker stages | how the stages were timed
stages_whole_ms | ms | tracker stages | the whole call's median latency that stages_sum_over_whole divides by
stages_additive | bool | tracker stages | the stages' sum is within 5% of the whole (false: not a split of the row's latency)
# --- tracker generation (--mode generate) ---
ttft_ms | ms | tracker generation | time to first token (median over generations)
e2e_ms | ms | tracker generation | end-to-end latency of one generation (median)
generations_timed | count | tracker generation | generations timed
gen_tokens_per_s | tok/s | tracker generation | batch x new tokens / e2e latency
tpot_method | text | tracker generation | how the per-token times were stamped
tpot_ms_mean | ms | tracker generation | time per output token after the first, mean
ttft_ms_<stat> | ms | tracker generation | time to first token, statistic <stat> (p50, p90, p95, p99, mean, ci95...)
tpot_ms_<stat> | ms | tracker generation | time per output token, statistic <stat>
itl_ms_<stat> | ms | tracker generation | inter-token latency, statistic <stat>
e2e_ms_<stat> | ms | tracker generation | end-to-end latency, statistic <stat>
ttft_cv | fraction | tracker generation | time to first token: std / mean over generations
tpot_cv | fraction | tracker generation | time per output token (per generation): std / mean
itl_cv | fraction | tracker generation | inter-token latency (every gap): std / mean
e2e_cv | fraction | tracker generation | end-to-end latency: std / mean over generations
energy_prefill_j_per_token | J/tok | tracker generation | board energy of the prefill alone (repeated >= 1 s) per prompt token, idle included
energy_decode_j_per_token | J/tok | tracker generation | board energy of the decode steps alone (repeated >= 1 s) per generated token, idle included
energy_prefill_above_idle_j_per_token | J/tok | tracker generation | energy_prefill_j_per_token less idle power x duration (a lower bound)
energy_decode_above_idle_j_per_token | J/tok | tracker generation | energy_decode_j_per_token less idle power x duration (a lower bound)
energy_phase_method | text | tracker generation | how the per-phase energy was measured
energy_phase_note | text | tracker generation | why there is no per-phase energy (NVML unavailable)
<metric>_cv | fraction | tracker generation | coefficient of variation of a generation metric
# --- tracker estimate (analytic cost model) ---
estimate_stage | id | tracker estimate | the LM stage the estimate models (prefill or decode)
estimate_gflops | GFLOP | tracker estimate | matrix-product FLOPs of that stage, analytic (must equal its counted
    FLOPs)
estimate_mib | MiB | tracker estimate | bytes the stage moves, analytic (MiB = 2^20 bytes)
estimate_tokens | tokens | tracker estimate | the LM length the estimate is made at (a vision reducer's output length)
estimate_note | text | tracker estimate | how the estimate differs from the measured call (an LM reducer's rows:
    unreduced length; a row not in bf16 or fp16: the model is of a 16-bit deployment, and no ratio is given)
estimate_ms | ms | tracker estimate | the roofline bound on this device's ceilings (cuda)
estimate_ceilings | id | tracker estimate | the ceilings used
estimate_method | text | tracker estimate | the model (LLM-Viewer-style roofline)
measured_over_estimate | x | tracker estimate | measured stage time / estimate_ms
# --- launchers and the comparison ---
speedup_ci95_low | x | comparison | speedup's 95% interval, low end (from the two medians' intervals)
speedup_ci95_high | x | comparison | speedup's 95% interval, high end
exec_note | text | runner | how the row was executed where that differs from what was asked (a graphs default off CUDA; --eager's as-deployed figure)
process_unfit | text | runner | why this row left its process unfit for the next row (the rows after it ran in a fresh process)
fresh_process | text | launcher inline | this row ran in a fresh worker process because an earlier row left the process unfit
baseline | id | compare | the label of the row the ratios are against
speedup | x | compare | baseline latency / this row's latency
params_ratio | x | compare | params_total / the baseline's
gflops_ratio | x | compare | gflops / the baseline's
peak_mem_ratio | x | compare | peak_mem_mib / the baseline's
speedup_unsteady | bool | compare | True when this row's or the baseline's latency is unsteady
ratio_unreliable | bool | compare | True when the rows are too unsteady for the ratio to mean anything (shown as ~)
speedup_note | text | compare | why a ratio is unreliable
ratio_note | text | launch.pool | why a row has no ratio (another device than the baseline)
launcher | id | launch | the launcher that ran the row (inline, pool, passes, torchrun, ray)
row | count | launch.pool | the row's index in the profile
worker | count | launch.pool | the worker process (slot) that measured the row
worker_pid | count | launch.pool | that worker's process id
worker_by_process | list | launch.passes | the worker of each pass (JSON only)
gpu_index | count | launch.pool | the GPU the row ran on (--gpus)
host_cpu_busy_pct | % | launch.pool | the host's CPU busy share during the row
host_load_1min | count | launch.pool | the host's 1-minute load average at the row's end
host_cpus | count | launch.pool | the host's CPUs
host_<name> | text | tracker host_load | a fact about the host's load while the row ran (host_cpu_busy_pct, host_other_busy_pct, host_load_1min, host_cpus)
rows_in_flight_max | count | launch.pool | the most rows measured at the same time as this one (sharing the host)
isolated | bool | launch.pool | True when the row had a fresh worker process of its own (--isolate)
gpu_index_by_process | list | launch.passes | the GPU of each pass (JSON only)
processes | count | launch.passes | passes (fresh processes) the row was measured in (--processes)
processes_ok | count | launch.passes | passes in which the row succeeded
latency_ms_process_medians | list | launch.passes | each pass's median (JSON only)
latency_samples_process_sizes | list | launch.passes | samples per pass (JSON only)
latency_ms_process_<stat> | ms | launch.passes | a statistic over the passes' medians
ray_node | id | launch.ray | the Ray node that ran the row
ray_gpu_ids | id | launch.ray | the GPU ids Ray gave the task
tp | count | launch.torchrun | tensor-parallel degree (--tp)
tp_backend | id | launch.torchrun | the collectives' backend: nccl or gloo
tp_rank_devices | text | launch.torchrun | each rank's device, ;-separated
peak_mem_mib_per_rank | text | launch.torchrun | each rank's peak memory, MiB
weights_mib_per_rank | text | launch.torchrun | each rank's weights, MiB
latency_ms_median_per_rank | text | launch.torchrun | each rank's median latency, ms
params_per_rank | count | launch.torchrun | parameters of one rank's shard
gflops_per_rank | GFLOP | launch.torchrun | FLOPs of one rank (the roofline columns use these)
comm_share | fraction | launch.torchrun | collective kernels' device time / all kernels' device time
comm_share_max_rank | fraction | launch.torchrun | the largest comm_share over the ranks
comm_ms_per_call | ms | launch.torchrun | collective time per call
comm_method | text | launch.torchrun | how comm_share was measured
tp_speedup | x | launch.torchrun | tp=1 latency / this latency
tp_scaling_efficiency | fraction | launch.torchrun | tp_speedup / tp
world_size | count | launch.torchrun | processes in the group
# --- components' facts (Built.info, Built.extras) ---
reducer_fitted | text | component | an LM reducer's layer defaults scaled to a shallower LM (e.g. fastv_k 2 -> 1)
reducer_meta_count | text | component | on --device meta: the reducer counted at the token count it declares
weights | id | component | random, or the checkpoint loaded (--pretrained)
architecture | id | component | the architecture built (preset)
attention | id | component | the attention implementation (sdpa, eager, ...)
n_head | count | component | attention heads
image_size | px | component | image side in pixels
patch_size | px | component | patch side in pixels
patches | count | component | patches per image
pos_interpolated | bool | component | True when the position embeddings were interpolated to the image size
caption_tokens | tokens | component | text tokens per caption (clip-dual)
adapt | id | component | what clip-dual adapts (LoRA targets)
lora_merged | bool | component | True when the LoRA weights are merged into the base
lora_backend | id | component | how LoRA is applied
lora_layers | count | component | layers with LoRA adapters
tokens_in | tokens | component | tokens entering the component (or the reducer)
tokens_out | tokens | component | tokens leaving it
patches_kept | count | component | patches the pruner keeps
pruning | text | component | how tokens are pruned
padded_tokens | tokens | component | tokens after padding to the projector's grid
lowres_tokens | tokens | component | tokens of the low-resolution path
reducer_site | id | component | where the token reducer acts
reducer_kept | count | component (extras) | tokens the reducer kept on the measured input
image_tokens_in | tokens | component (extras) | image tokens before the reducer
image_tokens_out | tokens | component (extras) | image tokens after it
lm_tokens_per_layer | text | component (extras) | tokens the LM sees per layer (NxL: N tokens in L layers)
lm_image_tokens_per_layer | text | component (extras) | image tokens the LM sees per layer
fidelity_cos | fraction | component (extras) | cosine similarity of the reduced model's output to the full model's
    (mean over the batch)
fidelity_cos_min | fraction | component (extras) | the lowest cosine over the batch
fidelity_dtype | id | component (extras) | the dtype the fidelity was computed in
fidelity_of | text | component (extras) | which output fidelity_cos compares
fidelity_note | text | component (extras) | what the fidelity means for these weights and inputs
next_token_agreement | fraction | component (extras) | share of sequences whose next token is the full model's
scan_backend | id | component | selective-scan path (ref, triton, mamba-ssm)
conv_backend | id | component | causal-conv1d path
decode_backend | id | component | decode-step path
decode_impl | id | component | the LM's decode implementation (transformers, fused)
scan_mode | id | component | SS2D's scan routes (cross4, bidi, raster, ...)
scan_directions | count | component | SS2D's scan directions
scan_sequences | count | component | K: sequences scanned per image and layer (VMamba's cross scan: 4)
scan_gflops_per_img | GFLOP | component | the selective scans' FLOPs per image
d_state | count | component | SSM state size
d_inner | count | component | Mamba's inner width
dt_rank | count | component | Mamba's dt rank
d_model | count | component | model width (hidden size)
n_layer | count | component | layers of the model
vocab_size | count | component | vocabulary size
context_len | tokens | component (extras) | tokens in the cache when the timed token is decoded
state_mib | MiB | component (extras) | conv + SSM state (constant in the context)
state | text | component | what grows with the context (Cobra: nothing, a constant state)
kv_cache | text | component | the KV cache kind
kv_cache_mib | MiB | component (extras) | KV cache bytes at the measured context
published_params_m | M | component | the paper's parameter count, millions
published_gmacs | GMAC | component | the paper's GFLOPs figure (MACs) at 224 px
image_tokens | tokens | component | image tokens in the prompt
prompt_tokens | tokens | component | text tokens of the prompt
sequence_tokens | tokens | component | image + text tokens of the prefill
projector | id | component | the VLM's projector
vision | id | component | the VLM's vision tower
towers | id | component | how Cobra's two vision towers ran: concurrent (two CUDA streams) or sequential
lm_width | count | component | the LM's width
lm_layers | count | component | the LM's layers
new_tokens | tokens | component | tokens generated per sequence
runs | count | component | generations to time, as --runs asked (none: at least 10, more while 2 x min-time lasts, at most 200)
lm_head | bool | component | the LM head is applied (logits of the last position); off = the backbone's hidden states
prefill_exec | text | component | how the prefill of a generation ran (eager or graphs)
causal | bool | component | causal convolution (mrss)
streams | count | component | parallel streams (mrss)
kernel_dtype | id | component | the long-convolution kernel's dtype
fft_size | count | component | FFT length of the long convolution
params_full_kernel | count | component | parameters of an explicit kernel of the full length
params_stored | count | component | parameters stored by the implicit kernel
kernel_form | id | component | how the kernel is parameterised
conv_path | id | component | direct or FFT convolution
rel_err_kernel | fraction | component | relative error of the kernel against its reference
# --- studies ---
top1_pct | % | studies.evaluate (eval) | images whose label is the first logit, %
top5_pct | % | studies.evaluate (eval) | images whose label is among the first min(5, classes) logits, %
eval_images | count | studies.evaluate (eval) | images evaluated
eval_classes | count | studies.evaluate (eval) | classes of the folder
eval_wall_s | s | studies.evaluate (eval) | wall time of the evaluation
eval_img_per_s | items/s | studies.evaluate (eval) | images / wall time, decoding included
eval_model_img_per_s | items/s | studies.evaluate (eval) | images / time inside the model
eval_batch | count | studies.evaluate (eval) | evaluation batch
eval_data | text | studies.evaluate (eval) | the image folder
preprocess | text | studies.evaluate (eval) | the preprocessing (resize, crop, normalisation)
head | id | cli (eval) | the classifier head evaluated: checkpoint, fresh (the checkpoint's dropped) or random
cost_note | text | cli (eval) | where the cost columns of an eval record come from
quality_train_mse | count | studies.quality (quality) | training-set mean squared error after the steps
quality_test_mse | count | studies.quality (quality) | held-out mean squared error
quality_steps | count | studies.quality (quality) | optimisation steps
quality_trainable_params | count | studies.quality (quality) | trainable parameters of the student
"""

VIEWS = (
    View("row", "row", ("label",), "text", "brief", priority=0),
    View("params", "params", ("params",), "text", "full"),
    View("batch", "batch", ("batch",), "int", "brief", priority=1),
    View("dtype", "dtype", ("dtype",), "text", "brief", priority=1),
    View("device", "device", ("device",), "text", "brief", priority=1),
    View("status", "status", ("status",), "status", "brief", priority=0),
    View("latency", "latency ms\nmedian [p10, p90]", ("latency_ms_median", "latency_ms_p10", "latency_ms_p90"),
         "latency", "full"),
    View("latency_median", "latency\nms (median)", ("latency_ms_median",), "latency_median", "brief", priority=0,
         brief_header="latency\nms\n(median)"),
    View("cv", "CV\n(fraction)", ("latency_cv",), "cv", "full"),
    View("throughput", "throughput", ("throughput_per_s",), "throughput", "brief", priority=1),
    View("peak_mem", "peak mem\nMiB", ("peak_mem_mib",), "peak_mem", "brief", priority=2,
         brief_header="peak\nmem\nMiB"),
    View("weights", "weights\nMiB", ("weights_mib",), "num", "full"),
    View("params_m", "params M", ("params_total", "params_trainable"), "params_m", "brief", priority=3,
         brief_header="params\nM"),
    View("train_mib", "train MiB\nwts/grad/opt/act", ("train",), "train_split", "present", "--train", priority=2),
    View("train_peak", "train peak\nMiB", ("train_peak_mib",), "num", "present", "--train on cuda", priority=3),
    View("gflops", "GFLOP/call\n(2×MAC)", ("gflops",), "num4", "brief", priority=2,
         brief_header="GFLOP/\ncall\n(2×MAC)"),
    View("tflops", "TFLOP/s", ("tflops_per_s",), "num", "brief", priority=3),
    View("mfu", "MFU %\n(datasheet)", ("mfu_datasheet_pct",), "fixed1", "present", "cuda rows of a listed GPU",
         priority=3),
    View("mfu_measured", "MFU %\n(measured)", ("mfu_measured_pct",), "fixed1", "present",
         "rows on a device with effprof calibrate's cache", priority=4),
    View("mbu", "MBU %\n(datasheet)", ("mbu_datasheet_pct",), "fixed1", "present", "decode and generate rows on cuda",
         priority=3),
    View("mbu_measured", "MBU %\n(measured)", ("mbu_measured_pct",), "fixed1", "present",
         "decode rows on a calibrated device", priority=4),
    View("flop_cov", "FLOP\ncov. %", ("flop_coverage",), "flop_cov", "full"),
    View("pct_peak", "% of\npeak", ("pct_of_compute_ceiling",), "fixed1", "full"),
    View("gb_s", "GB/s\n(≥, lower bd.)", ("achieved_gb_per_s",), "gb_s", "full"),
    View("bound", "bound", ("verdict",), "text", "brief", priority=3),
    View("energy", "J/item\ntotal", ("energy_j_per_item",), "num", "full"),
    View("energy_above_idle", "J/item\nabove idle", ("energy_above_idle_j_per_item",), "num", "full"),
    View("sm_mhz", "SM MHz\n(median)", ("sm_clock_mhz_median",), "sm_mhz", "full"),
    View("mode", "mode", ("exec_mode",), "mode", "brief", priority=1),
    View("stages", "stages ms\n(split)", ("stage_names", "stage_<stage>_ms"), "stages", "present",
         "staged components (VLM prefill)",
         priority=3),
    View("ttft", "TTFT\nms", ("ttft_ms",), "num", "present", "--mode generate", priority=2),
    View("tpot", "TPOT ms\n(mean)", ("tpot_ms_mean",), "num", "present", "--mode generate", priority=2),
    View("kv_cache", "KV cache\nMiB", ("kv_cache_mib",), "num", "present", "transformer LMs and LLaVA", priority=3),
    View("state", "SSM state\nMiB", ("state_mib",), "num", "present", "Mamba LMs and Cobra", priority=4),
    View("tokens", "tokens\nin→out", ("tokens_in", "tokens_out"), "tokens", "present", "token reducers", priority=2),
    View("image_tokens", "img tokens\nin→out", ("image_tokens_in", "image_tokens_out"), "image_tokens", "present",
         "a VLM with --reducer", priority=2),
    View("fidelity", "fidelity\n(cos)", ("fidelity_cos",), "fixed4", "present", "token reducers", priority=2),
    View("scan", "scan", ("scan_backend",), "text", "full"),
    View("scan_k", "scan K\n(seqs)", ("scan_sequences",), "int", "present", "VMamba / SS2D", priority=3),
    View("paper_g_img", "paper G/img\n(MAC, fvcore)", ("paper_gmacs_per_img",), "num4", "present",
         "image models: the vision papers' GFLOPs", priority=4),
    View("gpu", "GPU", ("gpu_index",), "gpu", "full"),
    View("tp", "tp", ("tp",), "tp", "present", "--tp", priority=2),
    View("peak_act_mib", "peak act. MiB\nper rank", ("peak_mem_mib_per_rank",), "text", "full"),
    View("comm", "comm %\n(profiler)", ("comm_share",), "pct1", "present", "--tp", priority=3),
    View("tp_scaling", "tp scaling\neff. %", ("tp_scaling_efficiency",), "pct0", "present", "--tp", priority=3),
    View("fvcore_g", "fvcore G\n(MAC, no attn)", ("fvcore_gmacs",), "num4", "present", "--flops-crosscheck",
         priority=2),
    View("thop_g", "thop G\n(MAC, modules)", ("thop_gmacs",), "num4", "present", "--flops-crosscheck", priority=2),
    View("top_1", "top-1 %", ("top1_pct",), "fixed2", "present", "effprof eval", priority=1),
    View("top_5", "top-5 %", ("top5_pct",), "fixed2", "present", "effprof eval", priority=2),
    View("eval_img_s", "eval img/s\n(decode incl.)", ("eval_img_per_s",), "num", "present", "effprof eval",
         priority=3),
    View("speedup", "speedup\n×", ("speedup",), "speedup", "brief", priority=1),
    View("params_ratio", "params\nratio", ("params_ratio",), "ratio3", "brief", priority=4),
    View("gflops_ratio", "GFLOP\nratio", ("gflops_ratio",), "ratio3", "brief", priority=4),
    View("mem_ratio", "mem\nratio", ("peak_mem_ratio",), "mem_ratio", "brief", priority=3),
)
