"""What is measured: timing, memory, FLOPs/bytes, device facts. Knows nothing of components or tables."""

# A row whose per-sample latency CV (a fraction) is above this is marked unsteady in tables, its ratios too:
# several times what a quiet GPU or CPU shows, and what a loaded host produces (one CPU row read 0.108 ms,
# then 7.97 ms).
UNSTEADY_CV = 0.05
