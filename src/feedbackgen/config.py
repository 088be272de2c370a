"""Typed configuration shared across packages. A bad value fails here, naming the field and range."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from feedbackgen.errors import ConfigError


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


MAX_SEED = 2**63 - 1


class Decoding(StrictModel):
    """How text is decoded. Names follow Hugging Face `generate`; `feedbackgen.decoding`
    carries them out for every generator.

    `seed` is the seed of every request that carries none of its own (`FeedbackRequest.seed`);
    each request samples from its own random stream, so its text does not depend on what it is
    batched with. None draws a fresh seed per request, recorded in `Feedback.meta["seed"]` to
    replay it. Greedy and beam search use no seed.
    """

    max_new_tokens: int = Field(25, ge=1, le=1024, description="most tokens generated per sample")
    min_new_tokens: int = Field(0, ge=0, le=1024, description="fewest tokens before end-of-sequence is allowed")
    do_sample: bool = Field(False, description="sample instead of greedy / beam search")
    temperature: float = Field(1.0, gt=0.0, le=10.0, description="divides the logits before sampling")
    top_k: int = Field(0, ge=0, description="keep the k most likely tokens when sampling (0 = off)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass (1 = off)")
    num_beams: int = Field(1, ge=1, le=32, description="beams of beam search (1 = greedy or sampling)")
    num_candidates: int | None = Field(None, ge=1, le=64,
                                       description="texts decoded per request, the one of best utility kept "
                                       "(grounding, fluency, tone–rating agreement; docs/explanations.md); "
                                       "None = the model's own default, 1 = off")
    repetition_penalty: float = Field(1.0, ge=1.0, le=10.0,
                                      description="CTRL penalty on tokens already generated (1 = off)")
    no_repeat_ngram_size: int = Field(0, ge=0, le=10, description="never repeat an n-gram of this size (0 = off)")
    batch_size: int = Field(128, ge=1, le=8192, description="requests decoded together (output does not depend on it)")
    seed: int | None = Field(None, ge=0, le=MAX_SEED,
                             description="seed of requests without their own (None = draw one per request)")
    unknown_item: Literal["none", "fallback", "generate"] = Field(
        "none", description="an item the model knows nothing about: no text (none), a text saying there are "
                            "no reviews yet (fallback), or the model's own text (generate); meta.unknown_item "
                            "says which items were unknown (feedbackgen.models.unknown)")

    @model_validator(mode="after")
    def _no_beam_sampling(self) -> Decoding:
        if self.do_sample and self.num_beams > 1:
            raise ConfigError("beam sampling is not supported: use num_beams=1 with do_sample, "
                              "or do_sample=false with num_beams>1")
        return self


def validate(model_cls: type[BaseModel], values: dict[str, Any] | BaseModel | None, what: str) -> Any:
    """Build `model_cls` from `values`, turning pydantic's error into one readable ConfigError."""
    if isinstance(values, model_cls):
        return values
    if isinstance(values, BaseModel):
        values = values.model_dump()
    try:
        return model_cls.model_validate(values or {})
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(root)"
            if err["type"] == "extra_forbidden":  # a typo in a name: say so, and what was meant
                import difflib

                # a nested settings group's names are accepted flat too (`--set lr=...`): suggest them
                names = list(model_cls.model_fields) + [
                    name for f in model_cls.model_fields.values()
                    if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
                    for name in f.annotation.model_fields]
                close = difflib.get_close_matches(str(err["loc"][-1]), names, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(model_cls.model_fields)}"
                problems.append(f"{loc}: unknown setting ({hint})")
                continue
            problems.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError(f"invalid {what}: " + "; ".join(problems)) from None


def field_range(metadata: list[Any]) -> str:
    """pydantic's ge/gt/le/lt bounds as an interval, " in [0, 1)" for ge=0, lt=1; "" when unbounded."""
    from annotated_types import Ge, Gt, Le, Lt

    lo = next((("[", m.ge) for m in metadata if isinstance(m, Ge)), None) or \
        next((("(", m.gt) for m in metadata if isinstance(m, Gt)), None)
    hi = next(((m.le, "]") for m in metadata if isinstance(m, Le)), None) or \
        next(((m.lt, ")") for m in metadata if isinstance(m, Lt)), None)
    if lo is None and hi is None:
        return ""
    left = f"{lo[0]}{lo[1]}" if lo else "(-inf"
    right = f"{hi[0]}{hi[1]}" if hi else "inf)"
    return f" in {left}, {right}"


def set_value(value: Any) -> str:
    """A setting as it is typed after `--set key=`: text bare, the rest (None included, as null) as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def field_help(model_cls: type[BaseModel], name: str) -> str:
    """One line for `--help`: the field's description and its range, read from the pydantic model
    so that help text, defaults and validation cannot drift apart."""
    field = model_cls.model_fields[name]
    return (field.description or name.replace("_", " ")) + field_range(field.metadata)


def key_values(pairs: Iterable[str], option: str = "--set", form: str = "key=value", *,
               json_values: bool = True) -> dict[str, Any]:
    """`key=value` pairs, as typed after `option`, as a dict (the last of a key wins): keys
    stripped; with `json_values` a value is read as JSON when it parses (numbers, true, null,
    lists), else kept as text; without, it is stripped text. The one parser of such pairs (--set,
    --map, the benches'); ConfigError "`option` expects `form`, got ..." for a pair without "="."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"{option} expects {form}, got {pair!r}")
        key, raw = pair.split("=", 1)
        if json_values:
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
        else:
            value = raw.strip()
        out[key.strip()] = value
    return out


def parse_set_options(pairs: list[str]) -> dict[str, Any]:
    """Turn `--set key=value` pairs into a dict; values are parsed as JSON when they parse."""
    return key_values(pairs)


def column_mapping(pairs: list[str]) -> dict[str, str] | None:
    """`--map ours=theirs` pairs (our column name = the file's) as a dict; None for none."""
    return key_values(pairs, "--map", "ours=theirs (e.g. user_id=reviewer)", json_values=False) or None


def load_config_file(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    return data


class ServeConfig(StrictModel):
    """The service's limits and defaults (`feedbackgen serve` flags, `create_app(config=...)`). Here, not in
    `serve`, so the command line reads its help and defaults without loading the service."""

    max_batch: int = Field(32, ge=1, le=4096, description="most requests in one model batch (1 = no micro-batching)")
    max_wait_ms: float = Field(5.0, ge=0.0, le=10_000.0,
                               description="longest a request waits for others to join its batch")
    max_queue: int = Field(1024, ge=1, le=1_000_000,
                           description="requests waiting per model; a call that does not fit gets 503")
    max_requests: int = Field(64, ge=1, le=100_000, description="most requests in one /v1/feedback call (more: 413)")
    # the cost of one call: what a client may ask the model's thread to do
    max_new_tokens: int = Field(128, ge=1, le=1024, description="largest decoding.max_new_tokens of a call (more: 422)")
    max_beams: int = Field(4, ge=1, le=32, description="largest decoding.num_beams of a call (more: 422)")
    max_call_tokens: int = Field(8192, ge=1, le=100_000_000,
                                 description="largest requests × num_beams × max_new_tokens of a call (more: 422)")
    threads: int | None = Field(None, ge=1, le=1024, description="torch CPU threads for every model "
                                "(None = torch's default); a model's own training setting is never used")
    max_body_bytes: int = Field(1 << 20, ge=1024, le=1 << 30, description="largest request body (more: 413)")
    unknown: Literal["fallback", "reject"] = Field(
        "fallback", description="users/items without training reviews: answer with the model's fallback "
                                "(and say so in `fallback`), or refuse with 404")
    exclude: Literal["none", "train", "train+valid", "all"] = Field(
        "train+valid", description="a /v1/recommend call's default: which of the user's own items (by split) "
                                   "are never recommended back")
    max_events: int = Field(1000, ge=1, le=1_000_000, description="most events in one /v1/events call (more: 413)")
    max_history: int = Field(1000, ge=1, le=1_000_000,
                             description="most items in a /v1/recommend call's history (more: 413)")
    request_timeout: float = Field(30.0, gt=0.0, le=3600.0, description="seconds a client has to send a whole "
                                   "request body; a slower one gets 408 and the connection is closed")
