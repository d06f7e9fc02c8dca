"""Strict JAX settings for the whole suite; 4 simulated CPU devices for the data-parallel tests."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
from hypothesis import settings  # noqa: E402

# The same examples on every run: a CI failure reproduces locally and a pass is not luck of the draw.
settings.register_profile("deterministic", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))

jax.config.update("jax_numpy_rank_promotion", "raise")
