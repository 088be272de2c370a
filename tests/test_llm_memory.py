"""What keeps `sft`'s LoRA training within a laptop's memory (`models.llm.training`): gradient
checkpointing and micro-batches are on by default, keep far fewer activations for the backward
pass, and compute the same loss and gradient as one plain pass over the batch; the merged copy
(`merge=True`) is saved without a second model in memory.

On the real SmolLM2-135M with rank-4 adapters and four short real reviews: seconds. The peak
memory itself is measured by `bench/llm_training.py --memory` (a whole fit, minutes).
"""

from __future__ import annotations

import polars as pl
import pytest
import torch

from feedbackgen.data.peter_format import read_peter
from feedbackgen.models.llm.sft import SFT_TRAINING, LoRASFT, SFTConfig
from feedbackgen.models.llm.training import IGNORE, accumulated_nll, checkpoint_layers, pad_right, target_nll
from feedbackgen.pretrained import load_causal_lm


@pytest.fixture(scope="module")
def lm_and_batch(data_root):
    """A rank-4 LoRA SmolLM2-135M and a right-padded batch of four real reviews of unequal length,
    the first half of each a prompt (IGNORE) and the rest the answer."""
    from peft import LoraConfig, get_peft_model

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    base, tokenizer = load_causal_lm("smollm2-135m-instruct")
    torch.manual_seed(0)
    lm = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                                         target_modules=["q_proj", "v_proj"]))
    df, _ = read_peter(data_root / "peter_format_musical_instruments")
    texts = df.filter(pl.col("text").str.len_chars().is_between(80, 400))["text"].head(4).to_list()
    rows = [tokenizer(t, add_special_tokens=False).input_ids[:48 - 8 * k] for k, t in enumerate(texts)]
    labels = [[IGNORE] * (len(r) // 2) + r[len(r) // 2:] for r in rows]
    batch = {"input_ids": pad_right(rows, tokenizer.pad_token_id), "labels": pad_right(labels, IGNORE),
             "attention_mask": pad_right([[1] * len(r) for r in rows], 0)}
    yield lm, batch
    torch.set_num_threads(before)


def nll_and_grads(lm, batch, micro):
    params = [p for p in lm.parameters() if p.requires_grad]
    lm.zero_grad(set_to_none=True)
    nll = accumulated_nll(lambda b: target_nll(lm, b["labels"], **{k: b[k] for k in ("input_ids", "attention_mask")}),
                          batch, micro, params)
    nll.backward()
    return float(nll.detach()), [p.grad.clone() for p in params]


def saved_bytes(lm, batch) -> int:
    """Bytes autograd keeps from a training forward pass for the backward pass, the model's own
    weights (which it keeps anyway) left out."""
    weights = {p.untyped_storage().data_ptr() for p in lm.parameters()}
    total = 0

    def pack(t):
        nonlocal total
        if t.untyped_storage().data_ptr() not in weights:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        target_nll(lm, batch["labels"], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return total


def test_memory_settings_are_on_by_default():
    c = SFTConfig()
    assert c.gradient_checkpointing is True
    assert c.micro_batch_size is not None and c.micro_batch_size < SFT_TRAINING["batch_size"]
    assert c.training.batch_size == SFT_TRAINING["batch_size"]  # the optimiser's batch is unchanged


def test_checkpointing_and_micro_batches_keep_less_and_compute_the_same_step(lm_and_batch):
    lm, batch = lm_and_batch
    lm.train()
    plain_bytes = saved_bytes(lm, batch)
    plain = nll_and_grads(lm, batch, None)
    checkpoint_layers(lm.get_base_model())
    try:
        # each of the 30 layers keeps its input (and what checkpoint needs to replay it) only; the
        # answer tokens' logits above the layers stay (5x less in all on these short rows)
        assert saved_bytes(lm, batch) < plain_bytes / 4
        # the embeddings' output still needs no grad: frozen layers below `lora_layers` stay unrecorded
        assert not lm.get_base_model().get_input_embeddings()(batch["input_ids"]).requires_grad
        for micro in (1, 3):  # one row at a time, and an uneven split (3 + 1 rows)
            nll, grads = nll_and_grads(lm, batch, micro)
            assert nll == pytest.approx(plain[0], rel=1e-5)
            for g, want in zip(grads, plain[1]):
                torch.testing.assert_close(g, want, rtol=1e-4, atol=1e-6)
        # validation (no autograd) is one plain pass, whatever micro is
        with torch.no_grad():
            assert float(accumulated_nll(lambda b: target_nll(lm, b["labels"], input_ids=b["input_ids"],
                                                              attention_mask=b["attention_mask"]),
                                         batch, 1, [])) == pytest.approx(plain[0], rel=1e-5)
    finally:
        lm.get_base_model().activation_checkpointing_disable()
        lm.eval()


@pytest.mark.slow  # make test keeps test_llm's sft save/merge/load (merged folder = merged model)
def test_merged_folder_is_the_merged_model_and_the_adapted_model_stays_exactly_as_it_was(lm_and_batch, tmp_path):
    from transformers import AutoModelForCausalLM

    lm, batch = lm_and_batch
    lm.eval()
    torch.manual_seed(1)
    with torch.no_grad():  # adapters that change something (B starts at zero)
        for name, p in lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
        before = {k: v.clone() for k, v in lm.state_dict().items()}
        want = float(target_nll(lm, batch["labels"], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))
        with lm.disable_adapter():
            plain = float(target_nll(lm, batch["labels"], input_ids=batch["input_ids"],
                                     attention_mask=batch["attention_mask"]))
    assert want != pytest.approx(plain, rel=1e-3)  # the adapters matter
    sft = LoRASFT()
    sft.lm = lm
    sft._save_merged(tmp_path / "merged")
    after = lm.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # put back exactly, not unmerged by subtraction
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in k or "base_layer" in k for k in merged.state_dict())
    with torch.no_grad():
        got = float(target_nll(merged, batch["labels"], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))
    assert got == pytest.approx(want, rel=1e-4)
