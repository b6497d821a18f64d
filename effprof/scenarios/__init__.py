"""Workloads written once for every model that fits them (optimum-benchmark's scenarios): `lm` is prefill,
decode and generate of a language model, a VLM included."""
