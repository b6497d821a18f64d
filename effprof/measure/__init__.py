"""What is measured: timing, memory, FLOPs/bytes, device facts. Knows nothing of components or tables."""
