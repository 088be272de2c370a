"""`sft`: LoRA fine-tuning of an instruction LM on the `llm` prompt, with the real answer as target.

Each training review becomes one chat: the prompt `llm` would send for (user, item) — profile,
item description, the user's k most similar *other* past reviews as examples (the review itself is
kept out of its own prompt) — and, as the assistant's answer, `{"rating": r, "review": "<text>"}`.
The loss is the LM's cross-entropy on the answer tokens only. LoRA adapters (`peft`; rank
`lora_r`, scale `lora_alpha`, on `target_modules`) are the only trained weights; the base model
stays frozen. Training uses `models.trainer.Trainer`: AdamW, warm-up and cosine decay, early
stopping on the validation loss, resumable checkpoints holding just the adapters. The log names
the loss by its terms (`loss_terms`): train and valid `loss` are both `nll_answer`, averaged the
same way. After training, `collapse_requests` seeded validation requests are answered greedily
(`collapse_max_new_tokens` review tokens) and the reviews give the collapse signal (USR,
repetition; `feedbackgen.models.collapse`), with the kinds of those answers (`answers`: a fallback
is a training review, not the model's); it is logged in the kept epoch's entry and in
`training.json`, and announced on stderr when the model answers every request alike.

Generation is exactly `llm`'s (same prompt, same answer checks, retries and fallback), answered by
the adapted model in process. Saved folder, besides `llm`'s files:

    adapter/   adapter_config.json + adapter_model.safetensors (peft's own layout)
    merged/    with `merge=True`: the base model with the adapters merged in, a plain Hugging Face
               folder any back-end can serve (`--set model=MODEL/merged` for `llm`)

With `rag_k` > 0 the prompt also quotes retrieved training reviews (`prompts.build_messages`),
leave-one-out for each training row, as for its examples.

The rating in each training answer is the user's real rating; the profile's averages are computed
over the training split including that review (a mild leak of its rating into its own prompt;
prompts at test time hold no test review).

What a training row costs, and the settings that cut it (measured by `bench/llm_training.py`):

- the prompt's tokens: `prompt_style="short"` with `shots=0, rag_k=3` holds fewer than half of
  the default few-shot prompt's, and nine tokens in ten of a row are prompt either way;
- only the answer's positions go through the output layer (`training.target_nll`, always on);
- `group_by_length`: batches of similar lengths, so little of a batch is padding;
- `target_modules=["q_proj", "v_proj"]`: fewer adapters (LoRA's own paper adapts these two);
- `lora_layers=N`: adapters in the top N decoder layers only. Nothing below layer L-N has a
  trainable weight, so autograd records no graph there and backward runs through N layers only;
- `autocast`: bfloat16 matrix products in the training and validation passes.

What a step holds in memory (`bench/llm_training.py --memory`): without help, every decoder
layer's activations for the backward pass, about 12 GB for a batch of 8 default prompts. On by
default, and neither changes what a step computes (loss and gradient equal up to float rounding):

- `gradient_checkpointing`: each layer keeps its input only and recomputes the rest in the
  backward pass (`training.checkpoint_layers`);
- `micro_batch_size=4`: the batch's forward and backward passes run 4 rows at a time, the gradients
  added up before the batch's one optimiser step (`training.accumulated_nll`).

The frozen bottom layers' outputs (with `lora_layers`) depend on no trained weight and could be
cached from the second epoch on; that is not done: they take gigabytes for the whole split, and
the default is one epoch. Packing several rows into one sequence is not done either: after length
grouping little padding is left to save, and rows packed together would attend to each other on
the CPU's attention path.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, model_validator

from feedbackgen.data.dataset import Dataset
from feedbackgen.errors import ConfigError, DataError
from feedbackgen.models.base import register
from feedbackgen.models.llm.backends import Backend, TransformersBackend
from feedbackgen.models.llm.llm_user import LLMUser
from feedbackgen.pretrained import DEFAULT_MODEL, load_causal_lm
from feedbackgen.models.llm.prompts import PromptConfig, ReviewHistory, answer_json, clean
from feedbackgen.models.llm.training import (AUTOCAST, COLLAPSE_MAX_NEW_TOKENS, COLLAPSE_REQUESTS,
                                             COLLAPSE_SETTINGS, GROUP_BY_LENGTH, IGNORE, TrainableView,
                                             accumulated_nll, check_collapse, checkpoint_layers, pad_right,
                                             return_freed_memory, set_threads, target_nll)
from feedbackgen.models.rating import fit_rating_model
from feedbackgen.models.text_units import target_rows
from feedbackgen.models.trainer import Trainer, TrainingArguments, flat_settings, nest_training
from feedbackgen.types import FeedbackRequest

# the Trainer's settings where sft's differ from `TrainingArguments`' defaults
SFT_TRAINING = {"lr": 2e-4, "batch_size": 8, "max_epochs": 1, "patience": 2}


class SFTConfig(PromptConfig):
    model: str = Field(DEFAULT_MODEL, description="base model: smollm2-135m-instruct, a .gguf, a folder or a hub name")
    device: str = Field("cpu", description="cpu, cuda, cuda:N or auto")
    dtype: str = Field("float32", pattern="^(float32|bfloat16|float16)$")
    num_threads: int | None = Field(None, ge=1, le=1024, description="training threads (generation uses the "
                                    "process's: generate/serve --threads)")
    # LoRA
    lora_r: int = Field(16, ge=1, le=1024, description="adapter rank")
    lora_alpha: float = Field(32.0, gt=0.0, le=4096.0, description="adapter scale (alpha / r multiplies the update)")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | str = Field(["q_proj", "k_proj", "v_proj", "o_proj"],
                                            description='module names to adapt, or "all-linear"')
    lora_layers: int | None = Field(None, ge=1, le=1024, description="adapt only the top N decoder layers "
                                    "(None = all): backward then runs through those N only")
    merge: bool = Field(False, description="also save the model with the adapters merged in (merged/)")
    # optimisation, batches, epochs, early stopping, seed, checkpoints (adapters only): the Trainer's
    # (no warm-up by default: LoRA's B starts at zero); `--set lr=...` is `--set training.lr=...`
    training: TrainingArguments = Field(default_factory=lambda: TrainingArguments(**SFT_TRAINING))
    max_length: int = Field(768, ge=32, le=32768, description="longest training sequence in tokens (cut from the left)")
    # memory (`bench/llm_training.py --memory`): both on, a default step peaks under 2 GB instead of 12 GB
    gradient_checkpointing: bool = Field(True, description="keep each decoder layer's input only and recompute "
                                         "its inside in the backward pass: a layer's activations in memory "
                                         "instead of all of them, for about a third more compute")
    micro_batch_size: int | None = Field(4, ge=1, le=65536, description="rows per forward/backward pass; a "
                                         "batch's micro-batches' gradients are added up before its one "
                                         "optimiser step (same step, less memory; None = the whole batch)")
    group_by_length: bool = GROUP_BY_LENGTH
    autocast: bool = AUTOCAST
    max_train_samples: int | None = Field(None, ge=1, description="a seeded sample of the training reviews")
    max_valid_samples: int = Field(128, ge=1, description="validation reviews scored after each epoch")
    # the collapse check after training (`training.check_collapse`)
    collapse_requests: int = COLLAPSE_REQUESTS
    collapse_max_new_tokens: int = COLLAPSE_MAX_NEW_TOKENS

    @model_validator(mode="before")
    @classmethod
    def _nest_training(cls, values: Any) -> Any:
        return nest_training(values, SFT_TRAINING)


@register
class LoRASFT(LLMUser):
    name = "sft"
    Config = SFTConfig

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self.lm = self.tokenizer = None
        self.training_log: list[dict[str, Any]] = []
        self.training_summary: dict[str, Any] | None = None  # loss terms, collapse signal (training.json)

    # -- data --------------------------------------------------------------------------------
    def _sample(self, df, n: int | None, salt: int):
        if n is None or n >= len(df):
            return df
        return df.sample(n, seed=self.config.training.seed + salt, shuffle=True)

    def encode(self, df) -> list[tuple[list[int], list[int]]]:
        """(input ids, labels) per row: the chat prompt (labels ignored) then the answer and <eos>."""
        c, h = self.config, self.history
        out = []
        for row in df.iter_rows(named=True):
            request = FeedbackRequest(row["user_id"], row["item_id"])
            messages, _ = self.messages(request, exclude=h.row_of_pair.get((row["user_id"], row["item_id"])))
            prompt = self.tokenizer(self.render(messages), add_special_tokens=False).input_ids
            answer = answer_json(row["rating"], clean(row[self._column], c.review_words))
            target = self.tokenizer(answer, add_special_tokens=False).input_ids + [self.tokenizer.eos_token_id]
            ids, labels = prompt + target, [IGNORE] * len(prompt) + target
            out.append((ids[-c.max_length:], labels[-c.max_length:]))
        return out

    def render(self, messages) -> str:
        """The chat as the model reads it, up to the assistant's turn (as `TransformersBackend` does)."""
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _batch(self, encoded, idx) -> dict[str, torch.Tensor]:
        rows = [encoded[i] for i in idx.tolist()]
        ids = pad_right([r[0] for r in rows], self.tokenizer.pad_token_id)
        labels = pad_right([r[1] for r in rows], IGNORE)
        mask = pad_right([[1] * len(r[0]) for r in rows], 0)
        device = next(self.lm.parameters()).device
        return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}

    # -- training ----------------------------------------------------------------------------
    def fit(self, dataset: Dataset) -> LoRASFT:
        dataset.require(self.name, text=True)
        from peft import LoraConfig, get_peft_model

        c = self.config
        set_threads(c.num_threads)
        return_freed_memory()
        train = self._sample(target_rows(dataset, "train", c.target), c.max_train_samples, 0)
        probe_rows = target_rows(dataset, "valid", c.target)  # the collapse check's: the whole split
        valid = self._sample(probe_rows, c.max_valid_samples, 1)
        if len(train) == 0 or len(valid) == 0:
            raise DataError(f"sft needs non-empty train and valid splits with a {c.target} text "
                            f"(got {len(train)} and {len(valid)} rows)")
        base, self.tokenizer = load_causal_lm(c.model, c.device, c.dtype)
        layers = self._top_layers(base)  # checked before the slow part
        self.history = ReviewHistory.from_dataset(dataset, c.target, c.embedding_model)
        self.rating = fit_rating_model(c.rating_model, dataset)
        self.rating_range = self.rating.rating_range
        torch.manual_seed(c.training.seed)
        lora = LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                          target_modules=c.target_modules, task_type="CAUSAL_LM", layers_to_transform=layers)
        self.lm = get_peft_model(base, lora)
        if c.gradient_checkpointing:  # after peft, which would otherwise make the embeddings require grad
            checkpoint_layers(base)
        tr, va = self.encode(train), self.encode(valid)

        trainable = [p for p in self.lm.parameters() if p.requires_grad]

        def loss_fn(batch):
            nll = accumulated_nll(self.answer_nll, batch, c.micro_batch_size, trainable)
            return {"loss": nll, "nll_answer": nll}

        def valid_extra(out: dict[str, float]) -> dict[str, float]:
            return {**out, "perplexity": math.exp(min(out["nll_answer"], 50))}

        trainer = Trainer(TrainableView(self.lm), c.training, n_train=len(tr), n_valid=len(va),
                          make_batch=lambda idx, train: self._batch(tr if train else va, idx), loss_fn=loss_fn,
                          valid_extra=valid_extra, fingerprint=self._fingerprint(train, valid),
                          terms=self.loss_terms(), lengths=[len(ids) for ids, _ in tr] if c.group_by_length else None,
                          desc="sft")
        result = trainer.fit()
        self.training_log = result.log
        self.lm.eval()
        self._backend = None
        self.is_fitted = True
        kept = next(e for e in result.log if e["epoch"] == result.best_epoch)
        before = self.answer_counts.copy()  # the check's answers are not the generator's to count
        sig = check_collapse(self, probe_rows, kept, len(train), len(result.log))
        sig["answers"] = dict(self.answer_counts - before)
        self.answer_counts = before
        self.training_summary = {"terms": self.loss_terms(), "best_epoch": result.best_epoch,
                                 "epochs": len(result.log), "train_rows": len(train), "collapse": sig}
        return self

    def _top_layers(self, base) -> list[int] | None:
        """The decoder layers that get adapters (peft's `layers_to_transform`): the top
        `lora_layers` of the base model's, or None for all. ConfigError when there are fewer."""
        n = self.config.lora_layers
        if n is None:
            return None
        total = getattr(base.config, "num_hidden_layers", None)
        if total is None:
            raise ConfigError(f"lora_layers needs a base model with decoder layers; {self.config.model!r} "
                              "does not say how many it has (num_hidden_layers): leave lora_layers unset")
        if n > total:
            raise ConfigError(f"lora_layers must be between 1 and {total} (the decoder layers of "
                              f"{self.config.model!r}), got {n}")
        return list(range(total - n, total))

    def answer_nll(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean NLL of the batch's answer tokens (`_batch`'s tensors), float32; under bfloat16
        autocast with `autocast`."""
        return target_nll(self.lm, batch["labels"], self.config.autocast,
                          input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    @staticmethod
    def loss_terms() -> dict[str, str]:
        """What the logged loss adds up (the same for train and valid; `perplexity` = exp(valid loss))."""
        return {"loss": "nll_answer (per batch, mean NLL of the answer's tokens: the JSON, the rating, the "
                        "review and <eos>; per epoch, the batches' mean weighted by their rows)"}

    @property
    def _column(self) -> str:
        return "explanation" if self.config.target == "explanation" else "text"

    def _fingerprint(self, train, valid) -> str:
        # settings that change how a step is computed, not what it computes, are left out too
        skip = {"checkpoint_dir", "progress", "num_threads", "merge", "gradient_checkpointing",
                "micro_batch_size"} | COLLAPSE_SETTINGS
        cfg = {k: v for k, v in flat_settings(self.config).items() if k not in skip}
        h = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode())
        for df in (train, valid):
            h.update(df.select("user_id", "item_id", "rating", self._column).write_csv().encode())
        return h.hexdigest()

    # -- generation: llm's, with the adapted model -------------------------------------------
    def make_backend(self) -> Backend:
        return TransformersBackend(lm=self.lm, tokenizer=self.tokenizer)

    # -- state -------------------------------------------------------------------------------
    def save_extra(self, path: Path) -> None:
        super().save_extra(path)  # the review history
        self.lm.save_pretrained(path / "adapter")
        if self.config.merge:
            self._save_merged(path / "merged")
            self.tokenizer.save_pretrained(path / "merged")
        self.tokenizer.save_pretrained(path / "adapter")

    def _save_merged(self, out: Path) -> None:
        """The base model with the adapters merged in, saved at `out` as a plain Hugging Face folder
        without a second copy of the model in memory (a deep copy took another 540 MB): the adapted
        layers' weights (a fifth of the model) are kept aside, the adapters merged in place, the
        weights saved under their plain names, and the kept weights put back exactly (unmerging by
        subtraction alone would round them, and change later answers)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [m for m in self.lm.modules() if isinstance(m, BaseTunerLayer)]
        kept = [m.get_base_layer().weight.detach().clone() for m in layers]
        self.lm.merge_adapter()
        try:
            state = {k.removeprefix("base_model.model.").replace(".base_layer.", "."): v
                     for k, v in self.lm.state_dict().items() if "lora_" not in k}
            self.lm.get_base_model().save_pretrained(out, state_dict=state)
        finally:
            self.lm.unmerge_adapter()  # peft's bookkeeping; the weights come back from `kept`
            with torch.no_grad():
                for m, w in zip(layers, kept):
                    m.get_base_layer().weight.copy_(w)

    def load_extra(self, path: Path, arrays: dict[str, torch.Tensor]) -> None:
        from peft import PeftModel

        super().load_extra(path, arrays)  # the review history
        c = self.config
        base, self.tokenizer = load_causal_lm(c.model, c.device, c.dtype)
        self.lm = PeftModel.from_pretrained(base, str(path / "adapter")).eval()

