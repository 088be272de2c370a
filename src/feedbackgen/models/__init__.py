"""Generators. Importing this package registers every built-in model."""

from feedbackgen.models import peter, popular, rating, retrieval  # noqa: F401  (registration)
from feedbackgen.models.base import REGISTRY, Generator, IdIndex, create, load, register

__all__ = ["REGISTRY", "Generator", "IdIndex", "create", "load", "register"]
