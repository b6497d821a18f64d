"""Visual token reducers: vision-side (PruMerge, VisionZip, ToMe, VTP) and LM-side (FastV, SparseVLM,
PyramidDrop, through `lm_prefill.prefill_with_drops`). Registered by name in `effprof/components/reducers.py`."""
