"""Generators. Importing this package registers every built-in model."""

from feedbackgen.models import popular, rating, retrieval  # noqa: F401  (registration)
from feedbackgen.models.base import REGISTRY, Generator, IdIndex, create, load, register

try:  # the neural generators register themselves when present
    from feedbackgen.models import peter  # noqa: F401
except ImportError as e:  # pragma: no cover - only while a model module is being written
    if "feedbackgen.models.peter" not in str(e) and "peter" not in str(e):
        raise

__all__ = ["REGISTRY", "Generator", "IdIndex", "create", "load", "register"]
