"""Pieces the LM-training generators (`sft`, `prompt_lm`) share around `models.trainer.Trainer`:
the trainable view of a partly frozen LM, padding, the loss on the target tokens (optionally under
bfloat16 autocast), and the collapse check that ends training.

What makes LM training cheaper on a CPU, measured by `bench/llm_training.py` (SmolLM2-135M, 2 cores
of an AMD EPYC with avx512_bf16 and no AMX, sft on 48 rows):

- logits only where a target token is predicted (`target_nll`): the 49,152-word output layer, its
  float32 logits and their log-softmax at every position took a third of an sft step (1.5× rows/s),
  and in `sft` nine positions in ten are prompt;
- length-grouped batches (`group_by_length`, `trainer.length_grouped_batches`): padding from 6-8 %
  (sft) and 29 % (prompt_lm) of a batch's tokens to under 2 %; 1.03× (sft), 1.1-1.2× (prompt_lm);
- bfloat16 autocast (`autocast`): matrix products in bfloat16, weights, optimiser state and losses
  in float32; 1.55× (sft with lora_layers), 1.3-1.4× (prompt_lm) here.

What keeps it within a laptop's memory (`bench/llm_training.py --memory`): a default `sft` step
(8 rows of about 700 tokens) kept every decoder layer's activations for the backward pass, about
400 MB a layer, 12 GB for the 30 layers. Gradient checkpointing (`checkpoint_layers`: each layer's
input is kept, its inside recomputed in the backward pass), micro-batches (`accumulated_nll`: the
batch's gradient added up over a few rows at a time, the optimiser step unchanged) and large
blocks handed back to the OS when freed (`return_freed_memory`) bring it under 2 GB.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from typing import Any

import polars as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from feedbackgen.errors import ConfigError
from feedbackgen.models import collapse

IGNORE = -100  # label of tokens the loss skips (prompts, padding), as in Hugging Face models

AUTOCAST = Field(False, description="training and validation forward passes under bfloat16 autocast "
                 "(weights, optimiser state and losses stay float32; generation never uses it): 1.3-1.6x "
                 "faster on a CPU with avx512_bf16 (measured on an AMD EPYC), and where AMX or a GPU runs "
                 "bfloat16; a CPU without bfloat16 instructions emulates it, usually slower")
# on by default: it costs nothing measurable (every row once per epoch, a seeded order that a resumed
# run draws again) and took padding from 6-8 % (sft) and 29 % (prompt_lm) of the tokens to under 2 %
GROUP_BY_LENGTH = Field(True, description="batch rows of similar length (Hugging Face's group_by_length: the "
                        "seeded shuffle in mega-batches of 50 batches, each sorted by length, the batches in "
                        "random order): less padding")


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


def autocast(enabled: bool, device: torch.device):
    """`torch.autocast` to bfloat16 on `device`'s type when `enabled`; otherwise it changes nothing."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def target_nll(lm: nn.Module, labels: torch.Tensor, bf16: bool = False, **inputs: torch.Tensor) -> torch.Tensor:
    """Mean next-token negative log-likelihood (nats, float32 scalar) of the labelled tokens.

    labels: (B, T) token ids, IGNORE where no loss is taken; `inputs` (input_ids or inputs_embeds,
    attention_mask, all (B, T, ...)) go to the Hugging Face causal LM `lm`. The same number as
    the model's own `labels=` loss, for less: only the positions that predict a labelled token go
    through the output layer (`logits_to_keep` as a boolean (B, T) mask). `bf16`: the LM's forward
    pass under bfloat16 autocast; the cross-entropy is taken in float32 either way.
    """
    targets = labels[:, 1:]  # position t predicts token t + 1
    wanted = targets != IGNORE
    keep = F.pad(wanted, (0, 1), value=False)
    with autocast(bf16, labels.device):
        # no KV cache: nothing is generated, and under gradient checkpointing transformers warns about one
        logits = lm(**inputs, logits_to_keep=keep, use_cache=False).logits  # (labelled tokens, vocabulary)
    return F.cross_entropy(logits.float(), targets[wanted])


def accumulated_nll(nll_of: Callable[[dict[str, torch.Tensor]], torch.Tensor], batch: dict[str, torch.Tensor],
                    micro: int | None, params: list[torch.Tensor]) -> torch.Tensor:
    """`nll_of(batch)`, the mean NLL of a batch's labelled tokens, computed `micro` rows at a time.

    batch: right-padded (B, T) tensors (`pad_right`) with "labels" (IGNORE where no loss is taken)
    and "attention_mask"; each micro-batch is cut to its own longest row. Under autograd each
    micro-batch's forward pass is followed at once by its backward pass (`torch.autograd.grad` into
    `params`, the trainable weights), so one micro-batch's activations are alive at a time; the
    micro-batches' means are weighted by their labelled tokens, so the value is the whole batch's
    mean. Returns a float32 scalar whose `backward()` puts exactly the summed gradient into
    `params`' `.grad` (the caller's optimiser step is that of the whole batch). Without autograd,
    or with `micro` None or ≥ B, it is `nll_of(batch)` itself.
    """
    labels = batch["labels"]
    if micro is None or micro >= len(labels) or not torch.is_grad_enabled():
        return nll_of(batch)
    counts = (labels[:, 1:] != IGNORE).sum(1).tolist()  # position t predicts token t + 1
    total = sum(counts)
    value = torch.zeros((), dtype=torch.float32, device=labels.device)
    grads = [torch.zeros_like(p) for p in params]
    for start in range(0, len(labels), micro):
        share = sum(counts[start:start + micro]) / total
        if share == 0:  # rows without an answer token add nothing (and their mean would be NaN)
            continue
        part = {k: v[start:start + micro] for k, v in batch.items()}
        width = int(part["attention_mask"].sum(1).max())  # right padding: the columns after it are all padding
        nll = nll_of({k: v[:, :width] for k, v in part.items()}) * share
        for g, d in zip(grads, torch.autograd.grad(nll, params, allow_unused=True)):
            if d is not None:
                g += d
        value += nll.detach()
    # value + (Σ p·g − its own value): the value is unchanged, and d/dp of it is g
    injected = sum((p * g).sum() for p, g in zip(params, grads))
    return value + (injected - injected.detach())


def checkpoint_layers(lm: nn.Module) -> None:
    """Gradient checkpointing of a Hugging Face model's decoder layers (non-reentrant): in training
    each layer keeps only its input and recomputes the rest in the backward pass (about a third more
    compute, a layer's activations instead of all of them). Generation and validation (no autograd)
    are unchanged. Raises ConfigError for a model without it."""
    if not getattr(lm, "supports_gradient_checkpointing", False):
        raise ConfigError(f"{type(lm).__name__} does not support gradient checkpointing: "
                          "set gradient_checkpointing=false")
    lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    # transformers then makes the embeddings' output require grad, which the reentrant variant needs
    # and the non-reentrant one does not: it would make autograd record the frozen layers below
    # `lora_layers`, whose backward pass lora_layers exists to skip
    lm.disable_input_require_grads()


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def return_freed_memory(threshold: int = 1 << 20) -> None:
    """Have glibc serve allocations of `threshold` bytes or more (activations, gradients) with their
    own memory maps, which go back to the OS when freed. By default glibc raises that threshold as
    large blocks are freed (up to 32 MiB), after which they come from its heap, where freed blocks
    of one layer's size stayed reserved next to the next layer's: 2.8 GB instead of 1.3 GB peak for
    a checkpointed 4-row `sft` step. Process-wide; does nothing off Linux or without glibc."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, threshold)
    except (OSError, AttributeError):  # another C library (musl): its own policy stays
        return


def set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)


# -- the collapse check ----------------------------------------------------------------------------

# The check's settings, declared in each LM generator's config (after the training ones, since
# `feedbackgen models` lists a config's fields in order). Decoding with an LM on a CPU costs far more
# than with peter, so the check runs once, on the final model, over fewer requests and tokens than
# peter's 200 per epoch. USR flags a model below 0.05, so under 21 requests only repetition can.
COLLAPSE_REQUESTS = Field(32, ge=1, le=100_000, description="validation requests decoded greedily after "
                          "training for the collapse signal (USR, repetition)")
COLLAPSE_MAX_NEW_TOKENS = Field(20, ge=1, le=1024, description="new tokens per request of that decoding")
# settings that change no trained weight: left out of the checkpoints' fingerprints
COLLAPSE_SETTINGS = frozenset({"collapse_requests", "collapse_max_new_tokens"})


def check_collapse(generator, valid: pl.DataFrame, kept: dict[str, Any], n_train: int,
                   epochs: int) -> dict[str, Any]:
    """The collapse signal of the trained `generator` (a fitted LM generator whose config has
    `collapse_requests`, `collapse_max_new_tokens` and `training.seed`): at most `collapse_requests`
    requests of `valid` (the validation rows), sampled with `seed`, decoded greedily to
    `collapse_max_new_tokens` new tokens each.

    Announced on stderr when collapsed (`collapse.announce`, which also adds the `warning`); the
    signal is stored under "collapse" in `kept`, the training-log entry of the kept weights, as
    peter does. Returns the signal (a dict, see `collapse.signal`)."""
    c = generator.config
    generator.is_fitted = True  # generate_text refuses an unfitted model
    requests = collapse.sample_requests(valid, c.training.seed, c.collapse_requests)
    sig = collapse.announce(generator.name, collapse.probe(generator, requests, c.collapse_max_new_tokens),
                            n_train, epochs)
    kept["collapse"] = sig
    return sig
