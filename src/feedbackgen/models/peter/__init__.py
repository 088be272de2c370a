"""`peter`: PETER (Li, Zhang & Chen, ACL 2021). `model.py`: the network, its configuration and
its generation loop; `generator.py`: the `Generator` (fit, predict, save/load)."""

from feedbackgen.models.peter.generator import Peter
from feedbackgen.models.peter.model import PETER, PRESETS, KVCache, PeterConfig, PeterShape, peter_mask

__all__ = ["PETER", "PRESETS", "KVCache", "Peter", "PeterConfig", "PeterShape", "peter_mask"]
