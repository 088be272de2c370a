"""Where an instruction LLM runs: one interface, four back-ends, chosen by configuration.

    backend = make_backend(config)                          # a BackendConfig (or any config with its fields)
    completions = backend.chat(conversations, decoding)     # one Completion per conversation

| `backend`      | runs                                             | `model` names                        |
|----------------|--------------------------------------------------|--------------------------------------|
| `transformers` | in-process, CPU or GPU, batched (left padding)  | default, .gguf, folder or hub name   |
| `llama_cpp`    | in-process llama.cpp (`llama-cpp-python`), GGUF  | default or a .gguf file              |
| `openai`       | any OpenAI-compatible server over HTTP: vLLM,    | the name the server knows the model  |
|                | Ollama, llama.cpp's server, OpenAI               | by (`served_model`, else `model`)    |
| `vllm`         | in-process vLLM on a GPU, batched                | folder or hub name                   |

Decoding follows `feedbackgen.config.Decoding`. `chat` takes one stream seed per conversation
(`feedbackgen.decoding.seeds.stream_seed`): `transformers` samples each row from its own
`torch.Generator` (`decoding.RowSampler`), the others send the seed with each conversation (32
bits of it for llama.cpp and HTTP servers). Greedy decoding is temperature 0 on the llama.cpp and
HTTP back-ends.

Beam search (`num_beams` > 1) and `no_repeat_ngram_size` exist only in `transformers`; the others
refuse them with a message rather than silently ignoring them. CPU threads are the process's
(`generate`/`serve --threads`): a back-end never sets them.

Constrained decoding (`chat(..., schema=...)`, on back-ends whose `constrains` is True): the answer
is decoded under a JSON schema, so it parses by construction. `transformers` masks tokens with
`llguidance` (`decoding.constrained`), which also closes the answer within the token budget;
`llama_cpp` samples under llama.cpp's grammar converted from the schema, and on the budget's last
token puts `"}` first (`CloseInTime`); `openai` asks the server with `response_format`
(`openai_backend`, which lives in its own module). `vllm` does not constrain yet: its answers are
pre-filled and repaired as before.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from feedbackgen.config import Decoding, StrictModel
from feedbackgen.decoding.constrained import SchemaConstraint
from feedbackgen.decoding.search import hf_generate_kwargs
from feedbackgen.errors import ConfigError
from feedbackgen.pretrained import (
    DEFAULT_MODEL,
    gguf_path,
    load_causal_lm,
    resolve_device,
    resolve_model,
)

Messages = list[dict[str, str]]
BackendName = Literal["transformers", "llama_cpp", "openai", "vllm"]


class BackendConfig(StrictModel):
    """Which model, and where it runs. Generators that answer through a back-end inherit these fields."""

    model: str = Field(DEFAULT_MODEL, description="smollm2-135m-instruct, a .gguf file, a model folder or a hub name")
    backend: BackendName = "transformers"
    device: str = Field("cpu", description="transformers: cpu, cuda, cuda:N or auto")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    num_threads: int | None = Field(None, ge=1, le=1024, description="not read at inference, where the "
                                    "process's threads apply (generate/serve --threads); kept so saved folders load")
    n_ctx: int = Field(4096, ge=256, le=1_000_000, description="llama_cpp: context length")
    base_url: str | None = Field(None, description="openai: e.g. http://127.0.0.1:8080/v1 "
                                                   "(default: $FEEDBACKGEN_LLM_BASE_URL, $OPENAI_BASE_URL)")
    served_model: str | None = Field(None, description="openai: the model name the server expects "
                                                       "(default: $FEEDBACKGEN_LLM_MODEL, else `model`)")
    api_key_env: str = Field("FEEDBACKGEN_LLM_API_KEY", description="environment variable holding the API key")
    timeout_s: float = Field(60.0, gt=0.0, le=3600.0, description="openai: seconds per request, in all (a server "
                                                                   "that trickles its answer cannot stretch it)")
    max_retries: int = Field(5, ge=0, le=50, description="openai: retries on 429/5xx/network errors")
    backoff_s: float = Field(1.0, ge=0.0, le=600.0, description="openai: first back-off, doubled per retry")
    concurrency: int = Field(4, ge=1, le=1024, description="openai: requests in flight at once")
    response_cache: bool = Field(True, description="openai: keep answers on disk; a rerun costs nothing")
    json_mode: bool = Field(True, description='openai: ask for response_format {"type": "json_object"} when '
                                              "no schema is sent (constrained=false, or the server refused it)")
    cache_dir: str | None = Field(None, description="openai: response cache folder "
                                                    "(default: $FEEDBACKGEN_CACHE/responses)")


@dataclass
class Completion:
    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None  # "stop" | "length"
    cached: bool = False
    constrained: bool = False  # decoded under the JSON schema it was asked for
    refused: str | None = None  # the server refused this conversation (HTTP 400/413/422): its message
    cache_key: str = ""  # where a caching back-end keeps it (`uncache` drops an answer found invalid)


class Backend(ABC):
    """`chat(conversations, decoding, prefix, seeds, schema)` -> one Completion each, in order.

    `seeds`: one stream seed per conversation (`decoding.stream_seed`; None: 0 for each), so that
    a conversation's sampled answer does not depend on the others in the call. `prefix` starts the
    assistant's answer (`{"rating":` keeps a small model on the JSON track); the completion's text
    includes it. A back-end that cannot pre-fill an answer (`prefills` False:
    the HTTP chat API) ignores it and returns what the model wrote. `schema`: a JSON schema the
    answer must follow (only on back-ends whose `constrains` is True; give no `prefix` with it, as
    the grammar starts at the answer's first token). `stats` counts the work."""

    name: str
    prefills: bool = True
    constrains: bool = False

    def __init__(self):
        self.stats: Counter = Counter()

    @abstractmethod
    def chat(self, conversations: list[Messages], decoding: Decoding, prefix: str = "",
             seeds: list[int] | None = None, schema: dict[str, Any] | None = None) -> list[Completion]:
        ...

    def close(self) -> None:
        pass

    def _refuse(self, decoding: Decoding) -> None:
        if decoding.num_beams > 1:
            raise ConfigError(f"num_beams > 1 (beam search) is not available on the {self.name} back-end; "
                              "use backend=transformers or num_beams=1")
        if decoding.no_repeat_ngram_size:
            raise ConfigError(f"no_repeat_ngram_size is not available on the {self.name} back-end; "
                              "use backend=transformers or repetition_penalty instead")
        if decoding.min_new_tokens:
            raise ConfigError(f"min_new_tokens is not available on the {self.name} back-end; "
                              "use backend=transformers or min_new_tokens=0")


# -- transformers ----------------------------------------------------------------------------------

class TransformersBackend(Backend):
    """A causal LM in this process: prompts sorted by length, batched with left padding, KV-cached."""

    name = "transformers"
    constrains = True

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "cpu", dtype: str = "float32", lm=None,
                 tokenizer=None):
        super().__init__()
        if lm is None:
            lm, tokenizer = load_causal_lm(model, device, dtype)
        self.lm, self.tokenizer = lm, tokenizer
        self.tokenizer.padding_side = "left"

    def render(self, messages: Messages) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def chat(self, conversations: list[Messages], decoding: Decoding, prefix: str = "",
             seeds: list[int] | None = None, schema: dict[str, Any] | None = None) -> list[Completion]:
        import torch

        seeds = seeds or [0] * len(conversations)
        prompts = [self.render(m) + prefix for m in conversations]
        lengths = [len(self.tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: -lengths[i])  # similar lengths share a batch
        out: list[Completion | None] = [None] * len(prompts)
        eos = self.tokenizer.eos_token_id
        device = next(self.lm.parameters()).device
        for start in range(0, len(order), decoding.batch_size):
            idx = order[start:start + decoding.batch_size]
            enc = self.tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                                 add_special_tokens=False).to(device)
            width = enc.input_ids.shape[1]
            constraint = (SchemaConstraint(self.tokenizer, schema, prompt_length=width,
                                           max_new_tokens=decoding.max_new_tokens) if schema else None)
            kwargs = hf_generate_kwargs(decoding, self.tokenizer.pad_token_id, eos, prompt_length=width,
                                        seeds=[seeds[i] for i in idx] if decoding.do_sample else None, device=device,
                                        constraint=constraint)
            with torch.no_grad():
                tokens = self.lm.generate(**enc, **kwargs)[:, width:]
            for row, i in enumerate(idx):
                seq = tokens[row].tolist()
                stopped = eos in seq
                seq = seq[:seq.index(eos)] if stopped else seq
                out[i] = Completion(prefix + self.tokenizer.decode(seq, skip_special_tokens=True), lengths[i], len(seq),
                                    "stop" if stopped else "length", constrained=schema is not None)
            self.stats["requests"] += len(idx)
        return out  # type: ignore[return-value]


# -- llama.cpp in process --------------------------------------------------------------------------

def sampling_options(d: Decoding, seed: int) -> dict[str, Any]:
    """Decoding for llama.cpp and OpenAI-style APIs: greedy is temperature 0. `seed`: the
    conversation's stream seed, cut to the 32 bits llama.cpp (and its server) take."""
    return {"temperature": d.temperature if d.do_sample else 0.0, "top_p": d.top_p if d.do_sample else 1.0,
            "seed": seed % 2**32}


class CloseInTime:
    """A llama-cpp-python logits processor: on the budget's last token, put `close` (the `"}` token)
    first, so an answer still in its review string ends as JSON; on the last but one, put the
    `spaced` tokens (those ending in a space, after which a word must follow) last. The grammar,
    applied after it, refuses `close` wherever it would not parse (then the best token it allows
    is taken). The grammar converted from `answers.answer_schema` allows no escapes, so no escape
    is left open at the end."""

    def __init__(self, close: int, spaced, max_new_tokens: int):
        self.close, self.spaced, self.max_new_tokens, self.start = close, spaced, max_new_tokens, None

    def __call__(self, input_ids, scores):
        if self.start is None:  # the first call comes before the first new token
            self.start = len(input_ids)
        left = self.max_new_tokens - (len(input_ids) - self.start)
        if left == 2:
            scores[self.spaced] -= 1e4  # not -inf: if the grammar allows nothing else, still one of them
        elif left == 1:
            scores[self.close] = scores.max() + 1.0
        return scores


class LlamaCppBackend(Backend):
    """A GGUF model through `llama-cpp-python`, one conversation at a time (its API has no batching)."""

    name = "llama_cpp"
    constrains = True

    def __init__(self, model: str = DEFAULT_MODEL, n_ctx: int = 4096):
        super().__init__()
        try:
            from llama_cpp import Llama
        except ImportError:
            raise ConfigError("the llama_cpp back-end needs llama-cpp-python: `make setup` builds it, or "
                              "pip install 'llama-cpp-python[server]==0.3.36'") from None
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        import torch

        threads = torch.get_num_threads()  # the process's setting (generate/serve --threads)
        self.llm = Llama(model_path=str(gguf_path(model)), n_ctx=n_ctx, verbose=False, n_threads=threads,
                         n_threads_batch=threads)
        # the GGUF's own chat template, rendered here so that an answer can be pre-filled
        special = lambda t: self.llm.detokenize([t], special=True).decode("utf-8", "ignore")  # noqa: E731
        self.eos = special(self.llm.token_eos())
        self.template = Jinja2ChatFormatter(self.llm.metadata["tokenizer.chat_template"], eos_token=self.eos,
                                            bos_token=special(self.llm.token_bos()))
        self._grammars: dict[str, Any] = {}
        self._spaced = None  # ids of the tokens ending in a space (CloseInTime), found on first use

    def grammar(self, schema: dict[str, Any]):
        """llama.cpp's grammar for `schema` (llama-cpp-python's converter), built once per schema."""
        from llama_cpp import LlamaGrammar

        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            self._grammars[key] = LlamaGrammar.from_json_schema(key, verbose=False)
        return self._grammars[key]

    def spaced_tokens(self):
        if self._spaced is None:
            import numpy as np

            self._spaced = np.array([t for t in range(self.llm.n_vocab())
                                     if self.llm.detokenize([t]).endswith(b" ")], dtype=np.int64)
        return self._spaced

    def chat(self, conversations: list[Messages], decoding: Decoding, prefix: str = "",
             seeds: list[int] | None = None, schema: dict[str, Any] | None = None) -> list[Completion]:
        self._refuse(decoding)
        out = []
        extra = {"top_k": decoding.top_k if decoding.do_sample else 1, "repeat_penalty": decoding.repetition_penalty}
        close = self.llm.tokenize(b'"}', add_bos=False)
        for messages, seed in zip(conversations, seeds or [0] * len(conversations)):
            if schema:  # a fresh budget watcher per conversation (it counts that conversation's tokens)
                extra["grammar"] = self.grammar(schema)
                if len(close) == 1:
                    extra["logits_processor"] = [CloseInTime(close[0], self.spaced_tokens(), decoding.max_new_tokens)]
            prompt = self.template(messages=messages).prompt + prefix
            r = self.llm.create_completion(prompt, max_tokens=decoding.max_new_tokens, stop=[self.eos],
                                           **sampling_options(decoding, seed), **extra)
            usage = r.get("usage") or {}
            out.append(Completion(prefix + r["choices"][0]["text"], usage.get("prompt_tokens"),
                                  usage.get("completion_tokens"), r["choices"][0].get("finish_reason"),
                                  constrained=schema is not None))
            self.stats["requests"] += 1
        return out

    def close(self) -> None:
        self.llm.close()


# -- vLLM on a GPU ---------------------------------------------------------------------------------

class VLLMBackend(Backend):
    """vLLM in this process: every conversation of a call in one batch (continuous batching on a GPU)."""

    name = "vllm"

    def __init__(self, model: str = DEFAULT_MODEL, dtype: str = "float32"):
        super().__init__()
        try:
            from vllm import LLM
        except ImportError:
            raise ConfigError("the vllm back-end needs vLLM and a CUDA GPU: pip install vllm "
                              "(or serve the model with `vllm serve` and use backend=openai)") from None
        self.llm = LLM(model=resolve_model(model), dtype="auto" if dtype == "float32" else dtype)
        self.tokenizer = self.llm.get_tokenizer()

    def chat(self, conversations: list[Messages], decoding: Decoding, prefix: str = "",
             seeds: list[int] | None = None) -> list[Completion]:
        from vllm import SamplingParams

        self._refuse(decoding)
        params = [SamplingParams(max_tokens=decoding.max_new_tokens, seed=seed,
                                 temperature=decoding.temperature if decoding.do_sample else 0.0,
                                 top_p=decoding.top_p if decoding.do_sample else 1.0,
                                 top_k=(decoding.top_k or -1) if decoding.do_sample else -1,
                                 repetition_penalty=decoding.repetition_penalty)
                  for seed in seeds or [0] * len(conversations)]
        prompts = [self.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) + prefix
                   for m in conversations]
        results = self.llm.generate(prompts, params, use_tqdm=False)
        self.stats["requests"] += len(conversations)
        return [Completion(prefix + r.outputs[0].text, len(r.prompt_token_ids), len(r.outputs[0].token_ids),
                           r.outputs[0].finish_reason) for r in results]


# -- choosing one ----------------------------------------------------------------------------------

def make_backend(c: BackendConfig) -> Backend:
    if c.backend == "transformers":
        return TransformersBackend(c.model, c.device, c.dtype)
    if c.backend == "llama_cpp":
        return LlamaCppBackend(c.model, c.n_ctx)
    if c.backend == "openai":
        key = os.environ.get(c.api_key_env) or os.environ.get("OPENAI_API_KEY")
        from feedbackgen.models.llm.openai_backend import OpenAIBackend  # it imports this module

        return OpenAIBackend(c.base_url, c.served_model or os.environ.get("FEEDBACKGEN_LLM_MODEL") or c.model,
                             key, c.timeout_s, c.max_retries, c.backoff_s, c.concurrency, c.cache_dir,
                             c.response_cache, c.json_mode)
    if c.backend == "vllm":
        resolve_device("cuda")
        return VLLMBackend(c.model, c.dtype)
    raise ConfigError(f"unknown backend {c.backend!r}")

