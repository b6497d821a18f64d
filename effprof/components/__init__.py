"""Built-in components. Importing this package registers them; add a module here to add a family."""
import importlib

for _module in ("projectors", "clip", "mamba", "mrss", "ssm_conv", "vlm", "vision_ssm", "clip_dual"):
    importlib.import_module(f"effprof.components.{_module}")
