"""Differentially private training (DP-SGD, Abadi et al. 2016) with opacus, for the trainer.

Each step of DP-SGD
1. draws its batch by Poisson sampling: every training row joins independently with probability
   `q = batch_size / n_train` (the sampling the privacy analysis assumes; batches vary in size);
2. computes one gradient per row (opacus's `GradSampleModule` hooks every layer) and clips each to
   norm `max_grad_norm`, so no row moves the model by more than that;
3. adds Gaussian noise of standard deviation `noise_multiplier × max_grad_norm` to their sum and
   divides by the expected batch size (opacus's `DPOptimizer`, wrapping the usual optimiser);
4. tells the accountant (RDP by default, or PRV), which turns the steps taken into the spent
   (ε, δ).

The noise multiplier is chosen before training so that every step of `max_epochs` spends at most
the target ε at the given δ; early stopping ends sooner and so spends less. The unit of privacy is
one training row (one review): a user with k reviews is protected at roughly k × ε.

Both the noise and the batch sampling must be unknown to whoever sees the model: with them known,
the noise could be subtracted and the batches (whose secrecy the subsampling analysis counts on)
are no secret. So they draw from their own generators, seeded from the operating system unless
`seed` is given (for tests and reproductions only: a known seed voids the guarantee). Their states
go into the training checkpoint, which must then be kept as private as the data. The generators
are torch's Mersenne twister, not a cryptographic generator (opacus's `secure_mode` needs
torchcsprng, which is not installed here).

What the guarantee covers is the model's weights as a function of the training rows. It does not
cover what the generator takes from the data outside of gradient steps: the vocabulary (words seen
at least `min_count` times), the user and item id lists, the mean training rating (the rating
head's starting bias), or the validation split (early stopping reads it freely).
"""

from __future__ import annotations

import secrets
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from feedbackgen.errors import ConfigError


@dataclass
class PrivacySettings:
    epsilon: float  # the target ε
    delta: float
    max_grad_norm: float = 1.0
    accountant: str = "rdp"  # "rdp" | "prv" (opacus's accountants)
    seed: int | None = None  # of the noise and the sampling; None = from the OS (see above)


def default_delta(n_train: int) -> float:
    """1e-5, or 1/(10 n) when that is smaller: δ should be well below 1/n (a δ of 1/n allows
    releasing one whole row)."""
    return min(1e-5, 1.0 / (10 * n_train))


def _opacus():
    try:
        import opacus
    except ImportError as e:  # an optional extra
        raise ConfigError("differentially private training (dp_epsilon) needs opacus: "
                          "pip install 'feedbackgen[privacy]'") from e
    return opacus


class Privacy:
    """DP-SGD around one module and its optimiser; `optimizer` replaces the caller's optimiser."""

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, s: PrivacySettings, *,
                 n_train: int, batch_size: int, steps: int):
        _opacus()
        from opacus import GradSampleModule
        from opacus.accountants import create_accountant
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.optimizers import DPOptimizer

        if s.delta >= 1.0 / n_train:
            raise ConfigError(f"dp_delta ({s.delta:g}) must be below 1 / training rows "
                              f"(1/{n_train} = {1 / n_train:.3g}); leave it unset for {default_delta(n_train):.3g}")
        if batch_size >= n_train:
            raise ConfigError(f"differentially private training samples batches of batch_size rows "
                              f"out of the training rows: batch_size ({batch_size}) must be below "
                              f"the number of training rows ({n_train})")
        self.s = s
        self.sample_rate = batch_size / n_train
        # opacus warns on every backward pass that the ID inputs need no gradient: true and harmless
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        # RDP at few steps with little noise: the bound is looser than it could be (ε over-, never
        # under-stated), which `spent()` reports as it is
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        try:
            self.noise_multiplier = float(get_noise_multiplier(
                target_epsilon=s.epsilon, target_delta=s.delta, sample_rate=self.sample_rate,
                steps=steps, accountant=s.accountant))
        except ValueError as e:  # opacus: "The privacy budget is too low."
            raise ConfigError(f"dp_epsilon {s.epsilon:g} at dp_delta {s.delta:g} cannot be reached in "
                              f"{steps} steps at sample rate {self.sample_rate:.3g} ({e}); raise dp_epsilon, "
                              "or train fewer epochs or on smaller batches") from e
        self.module = GradSampleModule(module, batch_first=True, loss_reduction="mean")
        seed = s.seed if s.seed is not None else secrets.randbits(62)
        self.noise = torch.Generator().manual_seed(seed)
        self.sampler = torch.Generator().manual_seed(seed + 1)
        self.optimizer = DPOptimizer(optimizer, noise_multiplier=self.noise_multiplier,
                                     max_grad_norm=s.max_grad_norm, expected_batch_size=batch_size,
                                     loss_reduction="mean", generator=self.noise)
        self.accountant = create_accountant(s.accountant)
        self.optimizer.attach_step_hook(self.accountant.get_optimizer_hook_fn(sample_rate=self.sample_rate))

    def sample(self, n_train: int) -> torch.Tensor:
        """A Poisson-sampled batch: each row independently with probability `sample_rate`."""
        return torch.nonzero(torch.rand(n_train, generator=self.sampler) < self.sample_rate).squeeze(1)

    def spent(self) -> dict[str, Any]:
        """The privacy spent so far, with what it was computed from."""
        steps = sum(n for _, _, n in self.accountant.history)
        return {"epsilon": float(self.accountant.get_epsilon(self.s.delta)) if steps else 0.0,
                "delta": self.s.delta, "target_epsilon": self.s.epsilon,
                "noise_multiplier": self.noise_multiplier, "max_grad_norm": self.s.max_grad_norm,
                "sample_rate": self.sample_rate, "steps": steps, "accountant": self.s.accountant}

    # -- checkpoints (plain data and one tensor; no pickles) ------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {"rng.noise": self.noise.get_state(), "rng.sample": self.sampler.get_state()}
        return tensors, {"history": [list(h) for h in self.accountant.history]}

    def load_state(self, tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> None:
        self.noise.set_state(tensors["rng.noise"])
        self.sampler.set_state(tensors["rng.sample"])
        self.accountant.history = [tuple(h) for h in data["history"]]

    def close(self) -> None:
        """Remove opacus's hooks: the module behaves as before (and pickles no per-sample state)."""
        self.module._close()
