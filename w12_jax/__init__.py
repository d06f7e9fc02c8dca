"""w12_jax: W1⊕W2 proximal generative flows (arXiv 2407.11901) in JAX/Flax."""

from w12_jax.checkpoint import Checkpointer, CheckpointError
from w12_jax.config import CASES, Config, ConfigError, override, with_case
from w12_jax.divergences import Divergence, get_divergence, gradient_penalty
from w12_jax.flow import EulerFlow, euler_flow, kinetic_energy, potential_derivatives, scalar_potential, velocity
from w12_jax.flow_matching import cfm_loss, ot_permutation
from w12_jax.loop import TrainingDiverged, TrainingInterrupted, train_and_evaluate
from w12_jax.mfg import hj_residual, terminal_residual
from w12_jax.networks import (Discriminator, Potential, VelocityField, make_discriminator, make_flow_network,
                              make_potential)
from w12_jax.presets import PRESETS, get_preset
from w12_jax.reflow import reflow, reflow_pairs
from w12_jax.sample import SOLVERS, SampleResult, generate, get_solver, sample
from w12_jax.train import Model, TrainState, build_model, init_train_state, make_train_step, outer_iteration

__version__ = "0.1.0"
