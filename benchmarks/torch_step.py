"""The same outer iteration in PyTorch (eager, CPU build): the framework a user would otherwise pick.

Same networks (design.md §6 MNIST pair), same flow (K forward-Euler steps of −∇U/lam, U frozen for the
critic), same losses (KL dual + one-sided GP; mean phi(x_K) + lam·KE through the unrolled flow with
create_graph) and the same logged indicators (HJ residual from ∂tU, terminal residual, |∇phi| on generated
and real samples). Benchmark-only: PyTorch is never a dependency of w12_jax.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import torch
from torch import nn


class ConvFeatures(nn.Sequential):
    def __init__(self, channels=(8, 8), kernel=7, in_channels=1):
        layers = []
        for c in channels:
            layers += [nn.Conv2d(in_channels, c, kernel, padding=kernel // 2, bias=False), nn.ReLU(),
                       nn.MaxPool2d(2, ceil_mode=True)]
            in_channels = c
        super().__init__(*layers, nn.Flatten())


def mlp(sizes):
    layers = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(sizes[-2], sizes[-1]))


class Potential(nn.Module):
    def __init__(self, hidden=(512, 512, 512), channels=(8, 8)):
        super().__init__()
        self.features = ConvFeatures(channels)
        self.head = mlp((channels[-1] * 7 * 7 + 1, *hidden, 1))

    def forward(self, x, t):  # x (B,1,28,28), t (B,)
        return self.head(torch.cat([self.features(x), t[:, None]], dim=1))[:, 0]


class Critic(nn.Module):
    def __init__(self, hidden=(256, 256, 256), channels=(8, 8)):
        super().__init__()
        self.features = ConvFeatures(channels)
        self.head = mlp((channels[-1] * 7 * 7, *hidden, 1))

    def forward(self, x):
        return self.head(self.features(x))[:, 0]


def grad_norm(critic, x, create_graph=False):
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(critic(x).sum(), x, create_graph=create_graph)
    return g.flatten(1).norm(dim=1), g


def flow(potential, x, T, K, lam, create_graph):
    """Euler flow; returns x_K, KE, HJ residual (with graph through U's params when create_graph)."""
    h, ke, hj = T / K, 0.0, 0.0
    for k in range(K):
        x = x if create_graph else x.detach()
        x = x.requires_grad_(True) if not x.requires_grad else x
        t = torch.full((x.shape[0],), k * h, requires_grad=True)
        gx, gt = torch.autograd.grad(potential(x, t).sum(), (x, t), create_graph=create_graph)
        sq = gx.flatten(1).pow(2).sum(1)
        ke = ke + h * (0.5 * sq / lam**2).mean()
        hj = hj + h * (gt - sq / (2 * lam)).abs().mean().detach()
        x = x - (h / lam) * gx
    return x, ke, hj


def kl_dual(phi_x, phi_y):
    return phi_x.mean() - (torch.logsumexp(phi_y, 0) - math.log(phi_y.shape[0]))


def outer_iteration(potential, critic, opt_u, opt_phi, data, B, n_critic, T=5.0, K=5, lam=0.05, L=1.0, mu=0.1):
    for i in range(n_critic):
        x0 = 0.5 * torch.rand(B, 1, 28, 28)
        x_T, _, _ = flow(potential, x0, T, K, lam, create_graph=False)
        x_T, y = x_T.detach(), data[i]
        a = torch.rand(B, 1, 1, 1)
        gnorm, _ = grad_norm(critic, a * y + (1 - a) * x_T, create_graph=True)
        loss = -kl_dual(critic(x_T), critic(y)) + mu * torch.relu(gnorm**2 - L**2).mean()
        opt_phi.zero_grad()
        loss.backward()
        opt_phi.step()
    x0 = 0.5 * torch.rand(B, 1, 28, 28)
    x_T, ke, hj = flow(potential, x0, T, K, lam, create_graph=True)
    loss = critic(x_T).mean() + lam * ke
    opt_u.zero_grad()
    loss.backward()
    opt_u.step()
    # indicators, as the JAX step logs them
    x_T = x_T.detach().requires_grad_(True)
    t = torch.full((B,), T)
    (gu,) = torch.autograd.grad(potential(x_T, t).sum(), x_T)
    gen_norm, gphi = grad_norm(critic, x_T)
    data_norm, _ = grad_norm(critic, data[-1])
    with torch.no_grad():
        return {"divergence": float(kl_dual(critic(x_T), critic(data[-1]))), "kinetic_energy": float(ke),
                "hj_residual": float(hj), "terminal_residual": float((gu - gphi).flatten(1).norm(dim=1).mean()),
                "grad_phi_gen_mean": float(gen_norm.mean()), "grad_phi_data_mean": float(data_norm.mean())}


def seconds_per_iteration(batch_size=200, n_critic=5, repeats=5, seed=0):
    """Median seconds of `repeats` outer iterations after one warm-up, on all CPU threads."""
    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    potential, critic = Potential(), Critic()
    opt_u = torch.optim.Adam(potential.parameters(), lr=5e-4, betas=(0.5, 0.9))
    opt_phi = torch.optim.Adam(critic.parameters(), lr=1e-4, betas=(0.5, 0.9))
    data = torch.rand(n_critic, batch_size, 1, 28, 28)
    outer_iteration(potential, critic, opt_u, opt_phi, data, batch_size, n_critic)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        metrics = outer_iteration(potential, critic, opt_u, opt_phi, data, batch_size, n_critic)
        times.append(time.perf_counter() - start)
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    return float(np.median(times)), torch.__version__
