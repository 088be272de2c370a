"""Moved to `feedbackgen.pretrained` (evaluation loads the same models and may not import `models`).
Kept so that older imports keep working; new code imports `feedbackgen.pretrained`."""

from feedbackgen.pretrained import *  # noqa: F401,F403
from feedbackgen.pretrained import (DEFAULT_GGUF, DEFAULT_MODEL, cache_root, convert_gguf,  # noqa: F401
                                    gguf_path, load_causal_lm, load_tokenizer, packaged_gguf, resolve_device,
                                    resolve_model)
