"""Pieces the LM-training generators (`sft`, `prompt_lm`) share around `models.trainer.Trainer`."""

from __future__ import annotations

import torch
import torch.nn as nn


class TrainableView(nn.Module):
    """The trainable parameters of `model` as a module of their own.

    The trainer copies its module's `state_dict` for the best epoch and writes it into checkpoints;
    handing it this view keeps a frozen 135M-parameter LM out of both. `train()`/`eval()` still
    reach the whole model (dropout in LoRA layers), and loading a state dict writes into the very
    parameters the model uses.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        object.__setattr__(self, "model", model)  # not registered: its frozen weights stay out of state_dict
        self.params = nn.ParameterDict({name.replace(".", "__"): p for name, p in model.named_parameters()
                                        if p.requires_grad})

    def train(self, mode: bool = True) -> TrainableView:
        self.model.train(mode)
        return super().train(mode)


def pad_right(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)
