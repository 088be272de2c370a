"""What one running service holds: its settings, loaded models with their batchers, the dataset.

Models and the dataset load in the background after start-up, so `/healthz` answers at once and
`/readyz` says when the service can answer `/v1` calls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from fastapi import HTTPException

from feedbackgen.config import Decoding, ServeConfig
from feedbackgen.data.dataset import Dataset
from feedbackgen.errors import ConfigError, FeedbackgenError
from feedbackgen.models import load
from feedbackgen.models.base import Generator
from feedbackgen.recommend.choice import ChoiceModel, load_choice
from feedbackgen.recommend.ranking import pool_of
from feedbackgen.serve.batching import MicroBatcher
from feedbackgen.serve.catalog import Catalog
from feedbackgen.serve.events import EventStore
from feedbackgen.serve.telemetry import Metrics
from feedbackgen.types import FeedbackRequest

log = logging.getLogger("feedbackgen.serve")


# the command-line flag of each limit, named in refusals so that a client knows what to ask for
FLAGS = {"max_requests": "--max-requests", "max_new_tokens": "--max-new-tokens", "max_beams": "--max-beams",
         "max_call_tokens": "--max-call-tokens"}


MAX_LISTED = 20  # unknown ids named in one refusal; more are counted


class FieldError(FeedbackgenError):
    """A request field that is well-formed but not acceptable here; answered as 422 naming it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


@dataclass
class ServedModel:
    name: str
    generator: Generator
    batcher: MicroBatcher
    executor: ThreadPoolExecutor
    source: str

    def describe(self) -> dict[str, Any]:
        """What `/v1/models` shows of this model. `collapse` is the signal recorded at training
        (`Generator.collapse_signal`) and `collapsed` its verdict: null when none was recorded."""
        g = self.generator
        signal = g.collapse_signal()
        return {"name": self.name, "model": g.name, "produces_text": g.produces_text,
                "rating_range": list(g.rating_range), "config": g.config.model_dump(), "source": self.source,
                "collapsed": None if signal is None else bool(signal.get("collapsed")), "collapse": signal}

    def warnings(self, decoding: Decoding) -> list[str]:
        """The warnings of one call answered with `decoding`: the model's collapse warning (in every
        answer of a collapsed model), then its `DecodingWarning`s for these settings.

        Computed from the model and the call's own settings, not caught while generating: warnings
        are recorded per process (`warnings.catch_warnings` is not thread-safe, and each model runs
        in its own thread) and a batch may join several calls, so catching would depend on timing.
        `Generator.decoding_warnings` depends on the decoding alone, which makes this exact."""
        out = []
        signal = self.generator.collapse_signal()
        if signal and signal.get("collapsed"):
            text = signal.get("warning") or (f"{self.generator.name} answers every request alike "
                                             f"(USR {signal.get('usr')}, repetition {signal.get('repetition')})")
            out.append(text.removeprefix("warning: "))
        return out + self.generator.decoding_warnings(decoding)


def model_names(paths: Sequence[str | Path]) -> dict[str, Path]:
    """{name: folder}: each folder's own name, with the parent in front where two share one."""
    paths = [Path(p) for p in paths]
    names = [p.resolve().name for p in paths]
    out = {}
    for p, n in zip(paths, names):
        name = f"{p.resolve().parent.name}/{n}" if names.count(n) > 1 else n
        if name in out:
            raise ConfigError(f"model folder {p} is given twice")
        out[name] = p
    return out


@dataclass
class Ranker:
    """The choice model that ranks `/v1/recommend` (`--choice`)."""

    name: str
    model: ChoiceModel
    source: str

    def describe(self) -> dict[str, Any]:
        m = self.model
        return {"name": self.name, "model": m.name, "kind": "choice", "roles": ["ranks"], "produces_text": False,
                "config": m.config.model_dump(), "source": self.source, "users": len(m.user_ids),
                "items": len(m.item_ids), "folds_history": m.folds_history}


class Service:
    def __init__(self, models: Mapping[str, Generator | str | Path], dataset: Dataset | str | Path | None,
                 config: ServeConfig, key_hashes: dict[str, str] | None = None, task=None,
                 choice: ChoiceModel | str | Path | None = None, events: str | Path | None = None):
        self.sources, self.dataset_source = dict(models), dataset
        self.choice_source, self.events_source = choice, events
        self.config, self.key_hashes, self.task = config, key_hashes, task
        self.metrics = Metrics()
        self.models: dict[str, ServedModel] = {}
        self.ranker: Ranker | None = None
        self.events: EventStore | None = None
        self.dataset: Dataset | None = None
        # ranking by a choice model is numpy (it releases the GIL): two threads, apart from the models'
        self.rank_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rank")
        self.catalog: Catalog | None = None
        self.ready = False
        self.error: str | None = None
        self._loading: asyncio.Task | None = None

    # -- life cycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._loading = asyncio.get_running_loop().create_task(self._load(), name="load-models")

    async def _load(self) -> None:

        try:
            if self.config.threads:  # the process's setting: generators never set threads themselves
                torch.set_num_threads(self.config.threads)
            for name, source in self.sources.items():
                generator = source if isinstance(source, Generator) else await asyncio.to_thread(load, source)
                executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")
                batcher = MicroBatcher(
                    generator.generate, executor, max_batch=self.config.max_batch,
                    max_wait_s=self.config.max_wait_ms / 1000.0, max_queue=self.config.max_queue,
                    on_batch=lambda size, s, name=name: self.metrics.observe_batch(name, size, s),
                    on_depth=lambda depth, name=name: self.metrics.queue_depth.labels(name).set(depth))
                batcher.start()
                self.models[name] = ServedModel(name, generator, batcher, executor,
                                                "in memory" if isinstance(source, Generator) else str(source))
                log.info("loaded model %s (%s)", name, generator.name)
            if self.dataset_source is not None:
                ds = self.dataset_source
                if not isinstance(ds, Dataset):
                    ds = await asyncio.to_thread(Dataset.load, ds)
                self.catalog = await asyncio.to_thread(Catalog, ds)
                self.dataset = ds
                await asyncio.to_thread(pool_of, ds)  # the ranking's per-dataset tables, built once
                log.info("dataset ready: %s", ds.summary())
            await self._load_choice_and_events()
            self.ready = True
            self.metrics.ready.set(1)
        except Exception as e:  # reported by /readyz; the process stays up to say so
            self.error = f"{type(e).__name__}: {e}"
            log.exception("loading failed")

    async def _load_choice_and_events(self) -> None:
        source = self.choice_source
        if source is not None:
            model = source if isinstance(source, ChoiceModel) else await asyncio.to_thread(load_choice, source)
            name = Path(source).name if not isinstance(source, ChoiceModel) else model.name
            self.ranker = Ranker(name, model, "in memory" if isinstance(source, ChoiceModel) else str(source))
            log.info("loaded choice model %s (%s): it ranks /v1/recommend", name, model.name)
        if self.events_source is not None:
            self.events = await asyncio.to_thread(EventStore, self.events_source)
            log.info("event store %s: %d events", self.events_source, await asyncio.to_thread(self.events.count))

    async def stop(self) -> None:
        """Called after the server stopped taking connections and answered the in-flight ones."""
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        for served in self.models.values():
            await served.batcher.stop()
            served.executor.shutdown(wait=True)
        self.rank_executor.shutdown(wait=True)
        if self.events is not None:
            self.events.close()

    def status_text(self) -> str:
        if self.ready:
            return "ready"
        return f"failed to load ({self.error})" if self.error else "loading models"

    # -- lookups used by the routes ----------------------------------------------------------
    def model(self, name: str | None) -> ServedModel:
        if not self.models:
            raise HTTPException(404, "this server has no model loaded (it serves annotation pages only)")
        if name is None:
            return next(iter(self.models.values()))
        if name not in self.models:
            raise FieldError("model", f"no model named {name!r}; loaded: {', '.join(self.models)}")
        return self.models[name]

    def need_catalog(self) -> Catalog:
        if self.catalog is None:
            raise HTTPException(404, "this server has no dataset (start it with --dataset DIR)")
        return self.catalog

    def check_cost(self, n_requests: int, decoding: Decoding) -> None:
        """Refuse a call over this server's cost limits: 413 for too many requests, 422 naming the
        decoding field and the limit otherwise. `n_requests` texts are generated with `decoding`."""
        c = self.config
        if n_requests > c.max_requests:
            raise HTTPException(413, f"this call holds {n_requests} requests; the limit is {c.max_requests} "
                                     f"per call (max_requests, {FLAGS['max_requests']})")
        for field, limit in (("max_new_tokens", "max_new_tokens"), ("num_beams", "max_beams")):
            value, most = getattr(decoding, field), getattr(c, limit)
            if value > most:
                raise FieldError(f"decoding.{field}", f"{value} is over this server's limit of {most} "
                                                      f"({limit}, {FLAGS[limit]})")
        cost = n_requests * decoding.num_beams * decoding.max_new_tokens
        if cost > c.max_call_tokens:
            raise FieldError("decoding", f"{n_requests} requests × {decoding.num_beams} beams × "
                                         f"{decoding.max_new_tokens} new tokens = {cost} is over this server's "
                                         f"limit of {c.max_call_tokens} per call (max_call_tokens, "
                                         f"{FLAGS['max_call_tokens']}): send fewer requests, tokens or beams")

    def unknown_ids(self, requests: Sequence[FeedbackRequest]) -> list[str]:
        """One warning naming the items (and one the users) of `requests` without training
        interactions: their answers are the generator's fallback, whatever its confidence."""
        if self.catalog is None:
            return []
        out = []
        for kind, known in (("item", self.catalog.knows_item), ("user", self.catalog.knows_user)):
            unknown = list(dict.fromkeys(getattr(r, f"{kind}_id") for r in requests
                                         if not known(getattr(r, f"{kind}_id"))))
            if unknown:
                shown = ", ".join(repr(i) for i in unknown[:MAX_LISTED])
                more = f" and {len(unknown) - MAX_LISTED} more" if len(unknown) > MAX_LISTED else ""
                out.append(f"{len(unknown)} {kind}(s) without training interactions, answered with the model's "
                           f"fallback (not from anything learnt about them): {shown}{more}")
        return out

    def fallback_of(self, user_id: str, item_id: str) -> list[str] | None:
        if self.catalog is None:
            return None
        return ([] if self.catalog.knows_user(user_id) else ["user"]) + \
               ([] if self.catalog.knows_item(item_id) else ["item"])

    def check_known(self, ids: Sequence[tuple[Literal["user", "item"], str, str]]) -> None:
        """With `unknown=reject`, 404 when any of `ids` ((kind, id, field) triples) was never seen in
        training: the message lists every unknown one (the first `MAX_LISTED`, then a count), the
        `field` names the first."""
        if self.config.unknown != "reject" or self.catalog is None:
            return
        known = {"user": self.catalog.knows_user, "item": self.catalog.knows_item}
        unknown = [(kind, value, field) for kind, value, field in ids if not known[kind](value)]
        if not unknown:
            return
        listed = ", ".join(f"{field} = {kind} {value!r}" for kind, value, field in unknown[:MAX_LISTED])
        more = f" and {len(unknown) - MAX_LISTED} more" if len(unknown) > MAX_LISTED else ""
        raise HTTPException(404, {
            "message": f"{len(unknown)} unknown id(s) without training reviews, so the models have nothing "
                       f"to go on: {listed}{more} (this server runs with unknown=reject; with fallback it "
                       "would answer with the model's fallback)",
            "field": unknown[0][2]})

    def check_rating(self, served: ServedModel, rating: float | None, field: str) -> None:
        """422 for a request rating outside the model's rating scale (a rating of 42 on 1-5 stars)."""
        lo, hi = served.generator.rating_range
        if rating is not None and not lo <= rating <= hi:
            raise FieldError(field, f"{rating:g} is outside the rating scale of model {served.name!r}, "
                                    f"which runs from {lo:g} to {hi:g}")

    def title(self, item_id: str) -> str | None:
        return self.catalog.titles.get(item_id) if self.catalog else None

