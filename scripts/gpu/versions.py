#!/usr/bin/env python3
"""Prints the versions of the frameworks gpu-check.sh exercises, one line; never fails."""

import importlib

parts = []
for name in ("torch", "jax", "cupy", "triton", "pynvml"):
    try:
        module = importlib.import_module(name)
        version = getattr(module, "__version__", None)
        if version is None and name == "pynvml":
            from importlib.metadata import version as dist_version
            version = dist_version("nvidia-ml-py")
        parts.append(f"{name}={version}")
    except Exception as error:  # report, never stop the header
        parts.append(f"{name}=unavailable({type(error).__name__})")
cuda = None
try:
    import torch
    cuda = torch.version.cuda
except Exception:
    pass
parts.append(f"torch_cuda={cuda}")
print(" ".join(parts))
