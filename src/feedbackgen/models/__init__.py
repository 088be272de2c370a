"""Generators. Importing this package registers every built-in model.

The LLM generators (`prompt_lm`, `sft`, `llm`) import transformers and peft only when one is built.
"""

from feedbackgen.models import llm, peter, popular, rating, retrieval  # noqa: F401  (registration)
from feedbackgen.models.base import (ALIASES, REGISTRY, Alias, Generator, IdIndex, create, effective_defaults, load,
                                     register)

__all__ = ["ALIASES", "REGISTRY", "Alias", "Generator", "IdIndex", "create", "effective_defaults", "load",
           "register"]
