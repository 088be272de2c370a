"""`/v1/recommend` (ranked by the one top-k path, explained by a generator) and `/v1/events`.

Who ranks: the choice model (`--choice`) when the server has one, else the generator's predicted
rating. Who writes: the generator named in the call (default: the first loaded), when
`with_feedback`; a server without a generator ranks only. The ranking is
`feedbackgen.recommend.ranking.top_k`, the CLI's and the Python API's, so the three give the same
list for the same user and `exclude`.

A caller is a known user (`user_id`), a visitor with a session (`history`: the items they took,
no account), or both; the user's stored events (`POST /v1/events`) join the history. History
items are never recommended back and are folded into the scoring by models that can (item-item:
from the items, factor models: the user's factors solved from them); an empty history with no
known user gets the popularity list.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, model_validator

from feedbackgen.recommend.ranking import pool_of, ranked_rows
from feedbackgen.serve.api import (ID_FIELD, WARNINGS, CallDecoding, FeedbackOut, Strict, answer, ready_service,
                                   run_feedback)
from feedbackgen.serve.events import Event
from feedbackgen.serve.service import MAX_LISTED, FieldError, Service
from feedbackgen.types import Feedback, FeedbackRequest

VISITOR = "(visitor)"  # the user id a session-only visitor is ranked and explained as (no training row has it)
ExcludeName = Literal["none", "train", "train+valid", "all"]


class RecommendCall(Strict):
    user_id: str | None = Field(None, **ID_FIELD, description="a user; may be unknown (then: popularity, or "
                                "their history)")
    history: list[str] | None = Field(None, description="items this visitor took in their session (instead of, "
                                      "or beside, user_id): never recommended back, and scored from")
    k: int = Field(10, ge=1, le=100, description="how many items")
    model: str | None = Field(None, description="the generator that explains (GET /v1/models); default: the first")
    candidates: list[str] | None = Field(
        None, min_length=1, max_length=10_000,
        description="items to rank; default: every item of the dataset, less the masked ones")
    exclude: ExcludeName | None = Field(None, description="which of the user's own items, by split, are never "
                                        "recommended back (default: the server's, --exclude)")
    with_feedback: bool = Field(True, description="generate the feedback for each recommended item")
    decoding: CallDecoding = Field(default_factory=CallDecoding)

    @model_validator(mode="after")
    def someone(self):
        if self.user_id is None and self.history is None:
            raise ValueError("give user_id, history (the visitor's items, may be empty), or both")
        return self


class Recommendation(BaseModel):
    item_id: str
    title: str | None
    score: float = Field(..., description="what ranked the item: the choice model's score, or the predicted rating")
    predicted_rating: float | None = Field(None, description="the generator's rating (null without one)")
    feedback: FeedbackOut | None
    repeated: bool = Field(False, description="the same text explains another item of this list too")


class RecommendAnswer(BaseModel):
    user_id: str | None
    ranker: str = Field(..., description="the model that ranked: a choice model, or the generator's rating")
    model: str | None = Field(None, description="the generator that wrote the feedback (null: none asked)")
    exclude: str
    history: int = Field(0, description="items of the history (the call's and the stored events) that were "
                                        "masked and scored from")
    candidates: int
    items: list[Recommendation]
    warnings: list[str] = Field(default_factory=list, description=WARNINGS + "; ids the models do not know")


class EventIn(Strict):
    user_id: str = Field(..., **ID_FIELD)
    item_id: str = Field(..., **ID_FIELD)
    rating: float | None = Field(None, allow_inf_nan=False, ge=-1e6, le=1e6)
    text: str | None = Field(None, max_length=20_000)
    timestamp: int | None = Field(None, ge=0, le=1 << 42, description="Unix seconds (default: when received)")


class EventsCall(Strict):
    events: list[EventIn] = Field(..., min_length=1, description="1..max_events events")


class EventsAnswer(BaseModel):
    stored: int = Field(..., description="events written (committed to disk before this answer)")
    duplicates: int = Field(..., description="events already stored (same user_id, item_id, timestamp)")
    warnings: list[str] = Field(default_factory=list)


router = APIRouter(prefix="/v1", tags=["v1"])


def named(ids: list[str], what: str) -> str:
    shown = ", ".join(repr(i) for i in ids[:MAX_LISTED]) + (f" and {len(ids) - MAX_LISTED} more"
                                                           if len(ids) > MAX_LISTED else "")
    return f"{len(ids)} {what}: {shown}"


def unknown_warnings(svc: Service, call: RecommendCall, history: list[str]) -> list[str]:
    """What the models do not know, named; 404 instead with `unknown=reject`."""
    catalog, out = svc.catalog, []
    if catalog is None:
        return out
    known_by_events = svc.events is not None and bool(svc.events.items_of(call.user_id or VISITOR))
    if call.user_id is not None and not catalog.knows_user(call.user_id) and not known_by_events:
        svc.check_known([("user", call.user_id, "user_id")] if not history else [])
        out.append(f"user {call.user_id!r} has no training interactions: ranked by "
                   + ("their history" if history else "popularity") + ", explained with the generator's fallback")
    for field, ids in (("history", call.history or []), ("candidates", call.candidates or [])):
        svc.check_known([("item", i, f"{field}[{n}]") for n, i in enumerate(ids)])
        unknown = [i for i in dict.fromkeys(ids) if not catalog.knows_item(i)]
        if unknown:
            out.append(named(unknown, f"{field} item(s) without training interactions, which no model can score"))
    return out


@router.post("/recommend", response_model=RecommendAnswer, summary="top-k items for a user or a visitor, explained",
             responses={401: {}, 404: {}, 413: {}, 422: {}, 503: {}})
async def recommend(call: RecommendCall, svc: Service = Depends(ready_service)):
    """Ranks with the choice model (else the generator's predicted rating) and explains the top k."""
    if call.history is not None and len(call.history) > svc.config.max_history:
        raise HTTPException(413, f"this call's history holds {len(call.history)} items; the limit is "
                                 f"{svc.config.max_history} (max_history, --max-history)")
    explain = call.with_feedback and bool(svc.models)
    if explain:
        svc.check_cost(call.k, call.decoding)
    served = svc.model(call.model) if svc.models else None
    if svc.ranker is None and served is None:
        raise HTTPException(404, "this server has no model to rank with")
    if svc.dataset is None and call.candidates is None:
        raise FieldError("candidates", "this server has no dataset to draw candidates from (start it with "
                                       "--dataset), so the call must list them")
    user = call.user_id or VISITOR
    history = list(dict.fromkeys([*(svc.events.items_of(user) if svc.events and call.user_id else []),
                                  *(call.history or [])]))
    warnings = unknown_warnings(svc, call, history)
    # without a dataset there is no split to mask by: the call's candidates are ranked as given
    exclude = (call.exclude or svc.config.exclude) if svc.dataset is not None else "none"
    ranker = svc.ranker.model if svc.ranker else served.generator
    rank = partial(ranked_rows, ranker, [user], call.k, exclude=exclude, dataset=svc.dataset,
                   history={user: history} if history else None,
                   candidates=list(dict.fromkeys(call.candidates)) if call.candidates else None)
    executor = svc.rank_executor if svc.ranker else served.executor
    ranked = await asyncio.get_running_loop().run_in_executor(executor, rank)
    pairs = [(item, score) for _, _, item, score in ranked]
    feedback: list[Feedback | None] = [None] * len(pairs)
    if explain and pairs:
        feedback = await run_feedback(svc, served, [FeedbackRequest(user, i) for i, _ in pairs], call.decoding)
        warnings += served.warnings(call.decoding)
    texts = [fb.text for fb in feedback if fb is not None and fb.text]
    items = [Recommendation(item_id=item, title=svc.title(item), score=score,
                            predicted_rating=(round(fb.rating, 4) if fb is not None
                                              else None if svc.ranker else round(score, 4)),
                            feedback=answer(fb, svc) if fb else None,
                            repeated=fb is not None and bool(fb.text) and texts.count(fb.text) > 1)
             for (item, score), fb in zip(pairs, feedback)]
    n_candidates = len(set(call.candidates)) if call.candidates else len(pool_of(svc.dataset).items)
    answer_ = RecommendAnswer(user_id=call.user_id, ranker=svc.ranker.name if svc.ranker else served.name,
                              model=served.name if explain else None, exclude=exclude, history=len(history),
                              candidates=n_candidates, items=items, warnings=warnings)
    return JSONResponse(answer_.model_dump(mode="json"))  # built and checked above: not validated twice


@router.post("/events", response_model=EventsAnswer, summary="what users did since training, applied at once",
             responses={401: {}, 404: {}, 413: {}, 422: {}, 503: {}})
async def events(call: EventsCall, svc: Service = Depends(ready_service)):
    """Stores the events durably (SQLite, committed before this answer); the next recommendation
    of each user masks their items and scores from them, without retraining."""
    if svc.events is None:
        raise HTTPException(404, "this server keeps no events (start it with --events FILE.sqlite)")
    if len(call.events) > svc.config.max_events:
        raise HTTPException(413, f"this call holds {len(call.events)} events; the limit is "
                                 f"{svc.config.max_events} per call (max_events, --max-events)")
    batch = [Event(e.user_id, e.item_id, e.rating, e.text, e.timestamp) for e in call.events]
    stored, duplicates = await asyncio.to_thread(svc.events.add, batch)
    warnings = []
    if svc.catalog is not None:
        unknown = [i for i in dict.fromkeys(e.item_id for e in batch) if not svc.catalog.knows_item(i)]
        if unknown:
            warnings.append(named(unknown, "item(s) without training interactions: stored (for the next "
                                           "training), masked, but no model can score from them yet"))
    return EventsAnswer(stored=stored, duplicates=duplicates, warnings=warnings)
