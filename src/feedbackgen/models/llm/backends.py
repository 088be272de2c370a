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
(`feedbackgen.generation.decoding.stream_seed`): `transformers` samples each row from its own
`torch.Generator` (`decoding.RowSampler`), the others send the seed with each conversation (32
bits of it for llama.cpp and HTTP servers). Greedy decoding is temperature 0 on the llama.cpp and
HTTP back-ends. Beam search (`num_beams` > 1) and `no_repeat_ngram_size` exist only in
`transformers`; the others refuse them with a message rather than silently ignoring them. CPU
threads are the process's (`generate`/`serve --threads`): a back-end never sets them.

The HTTP back-end reads its base URL, model and key from the configuration or the environment
(`FEEDBACKGEN_LLM_BASE_URL` / `OPENAI_BASE_URL`, `FEEDBACKGEN_LLM_MODEL`, the variable named by
`api_key_env`, then `OPENAI_API_KEY`; the key is never written to a model folder). It sends at most
`concurrency` requests at once, gives each `timeout_s`, retries on 429, 5xx and network errors
with exponential back-off (honouring `Retry-After`), and keeps every answer in an on-disk cache
keyed by the model, the messages and the decoding settings, so a rerun costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from feedbackgen.config import Decoding, StrictModel
from feedbackgen.errors import ConfigError, FeedbackgenError
from feedbackgen.generation.decoding import hf_generate_kwargs
from feedbackgen.io import atomic_write_json
from feedbackgen.pretrained import (
    DEFAULT_MODEL,
    cache_root,
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
    timeout_s: float = Field(60.0, gt=0.0, le=3600.0, description="openai: seconds per request")
    max_retries: int = Field(5, ge=0, le=50, description="openai: retries on 429/5xx/network errors")
    backoff_s: float = Field(1.0, ge=0.0, le=600.0, description="openai: first back-off, doubled per retry")
    concurrency: int = Field(4, ge=1, le=1024, description="openai: requests in flight at once")
    response_cache: bool = Field(True, description="openai: keep answers on disk; a rerun costs nothing")
    json_mode: bool = Field(True, description='openai: ask for response_format {"type": "json_object"}')
    cache_dir: str | None = Field(None, description="openai: response cache folder "
                                                    "(default: $FEEDBACKGEN_CACHE/responses)")


@dataclass
class Completion:
    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None  # "stop" | "length"
    cached: bool = False


class Backend(ABC):
    """`chat(conversations, decoding, prefix, seeds)` -> one Completion each, in order.

    `seeds`: one stream seed per conversation (`decoding.stream_seed`; None: 0 for each), so that
    a conversation's sampled answer does not depend on the others in the call. `prefix` starts the
    assistant's answer (`{"rating":` keeps a small model on the JSON track); the completion's text
    includes it. A back-end that cannot pre-fill an answer (`prefills` False:
    the HTTP chat API) ignores it and returns what the model wrote. `stats` counts the work."""

    name: str
    prefills: bool = True

    def __init__(self):
        self.stats: Counter = Counter()

    @abstractmethod
    def chat(self, conversations: list[Messages], decoding: Decoding, prefix: str = "",
             seeds: list[int] | None = None) -> list[Completion]:
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
             seeds: list[int] | None = None) -> list[Completion]:
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
            kwargs = hf_generate_kwargs(decoding, self.tokenizer.pad_token_id, eos, prompt_length=width,
                                        seeds=[seeds[i] for i in idx] if decoding.do_sample else None, device=device)
            with torch.no_grad():
                tokens = self.lm.generate(**enc, **kwargs)[:, width:]
            for row, i in enumerate(idx):
                seq = tokens[row].tolist()
                stopped = eos in seq
                seq = seq[:seq.index(eos)] if stopped else seq
                out[i] = Completion(prefix + self.tokenizer.decode(seq, skip_special_tokens=True), lengths[i], len(seq),
                                    "stop" if stopped else "length")
            self.stats["requests"] += len(idx)
        return out  # type: ignore[return-value]


# -- llama.cpp in process --------------------------------------------------------------------------

def sampling_options(d: Decoding, seed: int) -> dict[str, Any]:
    """Decoding for llama.cpp and OpenAI-style APIs: greedy is temperature 0. `seed`: the
    conversation's stream seed, cut to the 32 bits llama.cpp (and its server) take."""
    return {"temperature": d.temperature if d.do_sample else 0.0, "top_p": d.top_p if d.do_sample else 1.0,
            "seed": seed % 2**32}


class LlamaCppBackend(Backend):
    """A GGUF model through `llama-cpp-python`, one conversation at a time (its API has no batching)."""

    name = "llama_cpp"

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

    def chat(self, conversations: list[Messages], decoding: Decoding, prefix: str = "",
             seeds: list[int] | None = None) -> list[Completion]:
        self._refuse(decoding)
        out = []
        extra = {"top_k": decoding.top_k if decoding.do_sample else 1, "repeat_penalty": decoding.repetition_penalty}
        for messages, seed in zip(conversations, seeds or [0] * len(conversations)):
            prompt = self.template(messages=messages).prompt + prefix
            r = self.llm.create_completion(prompt, max_tokens=decoding.max_new_tokens, stop=[self.eos],
                                           **sampling_options(decoding, seed), **extra)
            usage = r.get("usage") or {}
            out.append(Completion(prefix + r["choices"][0]["text"], usage.get("prompt_tokens"),
                                  usage.get("completion_tokens"), r["choices"][0].get("finish_reason")))
            self.stats["requests"] += 1
        return out

    def close(self) -> None:
        self.llm.close()


# -- any OpenAI-compatible server over HTTP --------------------------------------------------------

class ResponseCache:
    """Answers on disk, one JSON file each, named by the SHA-256 of the request that produced them."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    @staticmethod
    def key(payload: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(key).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        atomic_write_json(self._path(key), value)


RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class OpenAIBackend(Backend):
    """POST {base_url}/chat/completions, `concurrency` at a time, with retries and a response cache."""

    name = "openai"
    prefills = False

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                 timeout_s: float = 60.0, max_retries: int = 5, backoff_s: float = 1.0, concurrency: int = 4,
                 cache_dir: str | Path | None = None, response_cache: bool = True, json_mode: bool = True):
        super().__init__()
        import httpx

        self.base_url = (base_url or os.environ.get("FEEDBACKGEN_LLM_BASE_URL")
                         or os.environ.get("OPENAI_BASE_URL") or "").rstrip("/")
        if not self.base_url:
            raise ConfigError("the openai back-end needs a base URL: set base_url (e.g. http://127.0.0.1:8080/v1) "
                              "or FEEDBACKGEN_LLM_BASE_URL")
        self.model = model or os.environ.get("FEEDBACKGEN_LLM_MODEL") or DEFAULT_MODEL
        self.max_retries, self.backoff_s, self.concurrency = max_retries, backoff_s, concurrency
        self.json_mode = json_mode
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout_s, headers=headers,
                                   limits=httpx.Limits(max_connections=concurrency))
        self.cache = ResponseCache(cache_dir or cache_root() / "responses") if response_cache else None
        self._lock = threading.Lock()

    def payload(self, messages: Messages, d: Decoding, seed: int = 0) -> dict[str, Any]:
        self._refuse(d)
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": d.max_new_tokens,
                                **sampling_options(d, seed)}
        if self.json_mode:  # the chat API cannot pre-fill an answer; servers can constrain it to JSON
            body["response_format"] = {"type": "json_object"}
        # not part of OpenAI's own API, but understood by vLLM and llama.cpp; sent only when used
        if d.do_sample and d.top_k:
            body["top_k"] = d.top_k
        if d.repetition_penalty != 1.0:
            body["repetition_penalty"] = body["repeat_penalty"] = d.repetition_penalty
        return body

    def chat(self, conversations: list[Messages], decoding: Decoding, prefix: str = "",
             seeds: list[int] | None = None) -> list[Completion]:
        seeds = seeds or [0] * len(conversations)
        payloads = [self.payload(m, decoding, seed) for m, seed in zip(conversations, seeds)]
        if self.concurrency == 1 or len(payloads) == 1:
            return [self._one(p) for p in payloads]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self._one, payloads))

    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.stats[what] += n

    def _one(self, payload: dict[str, Any]) -> Completion:
        key = ResponseCache.key(payload) if self.cache else ""
        if self.cache and (hit := self.cache.get(key)) is not None:
            self._count("cache_hits")
            return Completion(**{**hit, "cached": True})
        body = self._post(payload)
        choice = body["choices"][0]
        usage = body.get("usage") or {}
        result = Completion((choice.get("message") or {}).get("content") or "", usage.get("prompt_tokens"),
                            usage.get("completion_tokens"), choice.get("finish_reason"))
        if self.cache:
            self.cache.put(key, {k: v for k, v in result.__dict__.items() if k != "cached"})
        return result

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        import httpx

        url = f"{self.base_url}/chat/completions"
        for attempt in range(self.max_retries + 1):
            self._count("requests")
            wait = None
            try:
                r = self.client.post(url, json=payload)
                if r.status_code == 200:
                    return r.json()
                if r.status_code not in RETRY_STATUS:
                    raise FeedbackgenError(f"{url} answered {r.status_code}: {r.text[:300]}")
                problem = f"HTTP {r.status_code}"
                retry_after = r.headers.get("retry-after")
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    wait = float(retry_after)
            except (httpx.TimeoutException, httpx.TransportError) as e:
                problem = f"{type(e).__name__}: {e}"
            if attempt == self.max_retries:
                raise FeedbackgenError(f"{url}: giving up after {attempt + 1} attempts ({problem})")
            self._count("retries")
            if wait is None:
                wait = self.backoff_s * 2 ** attempt * (0.5 + random.random())  # jitter spreads the retries
            time.sleep(min(wait, 60.0))
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.client.close()


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
        return OpenAIBackend(c.base_url, c.served_model or os.environ.get("FEEDBACKGEN_LLM_MODEL") or c.model,
                             key, c.timeout_s, c.max_retries, c.backoff_s, c.concurrency, c.cache_dir,
                             c.response_cache, c.json_mode)
    if c.backend == "vllm":
        resolve_device("cuda")
        return VLLMBackend(c.model, c.dtype)
    raise ConfigError(f"unknown backend {c.backend!r}")
