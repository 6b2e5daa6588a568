"""Test session setup.

Eight virtual CPU devices let the sharding tests build real meshes on a CPU-only machine.
The flag must be set before jax is imported anywhere, hence here and at module top.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
