"""The JSON API: `/v1` (feedback, recommendations, users, items, models) and the health endpoints."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from feedbackgen.config import MAX_SEED, Decoding
from feedbackgen.data.text import detokenize
from feedbackgen.serve.batching import QueueFull, ShuttingDown
from feedbackgen.serve.service import ServedModel, Service
from feedbackgen.types import Feedback, FeedbackRequest, source_label

ID_FIELD = dict(min_length=1, max_length=256)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FeedbackRequestIn(Strict):
    user_id: str = Field(..., **ID_FIELD, examples=["A2IBPI20UZIR0U"])
    item_id: str = Field(..., **ID_FIELD, examples=["1384719342"])
    aspect: str | None = Field(None, min_length=1, max_length=100, description="ask about this aspect (PETER+)")
    rating: float | None = Field(None, allow_inf_nan=False, description="condition the text on a known rating, "
                                 "within the model's rating scale (GET /v1/models: rating_range; else 422)")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="this request's sampling seed (default: "
                             "decoding.seed, else drawn and returned in meta.seed)")


class CallDecoding(Decoding):
    """`Decoding` as a call sends it. `max_new_tokens` and `num_beams` have no upper bound of their
    own here: this server's limits (`ServeConfig.max_new_tokens`, `max_beams`, never above
    `Decoding`'s) are the bounds, and `Service.check_cost` refuses any value over them naming the
    limit and its flag. Decoding's own bounds (1024 tokens, 32 beams) would answer a larger value
    with a message that suggests those are allowed."""

    max_new_tokens: int = Field(25, ge=1, description="most tokens generated per sample (at most this "
                                "server's limit, --max-new-tokens; more: 422)")
    num_beams: int = Field(1, ge=1, description="beams of beam search (1 = greedy or sampling; at most this "
                           "server's limit, --max-beams; more: 422)")


class FeedbackCall(Strict):
    requests: list[FeedbackRequestIn] = Field(..., min_length=1, description="1..max_requests requests")
    model: str | None = Field(None, description="a loaded model's name (GET /v1/models); default: the first")
    decoding: CallDecoding = Field(default_factory=CallDecoding, description="decoding settings, as in `generate`")


class FeedbackOut(BaseModel):
    user_id: str
    item_id: str
    rating: float
    text: str
    aspects: list[str]
    model: str
    meta: dict[str, Any]
    fallback: list[str] | None = Field(
        None, description="what the model did not know and answered with its fallback for: 'user', 'item' "
                          "(null when the server has no dataset to tell)")
    display_text: str = Field("", description="`text` for reading: punctuation attached, sentence case "
                                                "(`text` keeps the tokens the metrics use)")
    source: str | None = Field(
        None, description="where the text came from, in one line: generated, copied from a training review "
                          "(whose, and of which item when another), fallback or none (meta.provenance has the "
                          "parts); null when the model records none")


WARNINGS = ("what the client should know about these answers: the model collapsed in training (it answers "
            "every request alike; GET /v1/models: collapsed), decoding options beyond what the model can honour")


class FeedbackAnswer(BaseModel):
    model: str
    feedback: list[FeedbackOut]
    warnings: list[str] = Field(default_factory=list, description=WARNINGS)


health = APIRouter(tags=["health"])
v1 = APIRouter(prefix="/v1", tags=["v1"])


def service(request: Request) -> Service:
    return request.app.state.service


def ready_service(request: Request) -> Service:
    svc: Service = request.app.state.service
    if not svc.ready:
        raise HTTPException(503, f"not ready: {svc.status_text()}", headers={"Retry-After": "2"})
    return svc


@health.get("/healthz", summary="the process is up")
async def healthz():
    return {"status": "ok"}


@health.get("/readyz", summary="every model (and the dataset) is loaded")
async def readyz(svc: Service = Depends(service)):
    body = {"status": svc.status_text(), "models": list(svc.models)}
    return JSONResponse(body, status_code=200 if svc.ready else 503)


@health.get("/metrics", summary="Prometheus metrics")
async def metrics(svc: Service = Depends(service)):
    for name, served in svc.models.items():
        svc.metrics.queue_depth.labels(name).set(served.batcher.depth)
    return Response(svc.metrics.render(), media_type=svc.metrics.content_type)


def answer(fb: Feedback, svc: Service) -> FeedbackOut:
    return FeedbackOut(**fb.to_dict(), fallback=svc.fallback_of(fb.user_id, fb.item_id),
                       source=source_label(fb.meta, fb.item_id) or None, display_text=detokenize(fb.text))


async def run_feedback(svc: Service, served: ServedModel, requests: list[FeedbackRequest],
                       decoding: Decoding) -> list[Feedback]:
    """Through the model's micro-batcher; a full queue is 503 with Retry-After, never a wait."""
    try:
        return await served.batcher.submit(requests, decoding)
    except QueueFull as e:
        svc.metrics.rejected.labels(served.name).inc(len(requests))
        raise HTTPException(503, f"overloaded: {e}", headers={"Retry-After": str(e.retry_after)}) from None
    except ShuttingDown as e:
        raise HTTPException(503, str(e), headers={"Retry-After": "5"}) from None
    except Exception as e:
        svc.metrics.generation_errors.labels(served.name).inc(len(requests))
        raise HTTPException(500, f"generation failed: {type(e).__name__}: {e}") from None


@v1.get("/models", summary="the loaded models: which ranks /v1/recommend (roles: ranks) and which writes")
async def list_models(svc: Service = Depends(ready_service)):
    """Generators write the feedback (role `writes`) and rank `/v1/recommend` by predicted rating
    when the server has no choice model; a choice model (`kind: choice`, `--choice`) ranks."""
    writers = [{**served.describe(), "kind": "generator", "roles": ["writes"] if svc.ranker else ["writes", "ranks"]}
               for served in svc.models.values()]
    return writers + ([svc.ranker.describe()] if svc.ranker else [])


@v1.post("/feedback", response_model=FeedbackAnswer, summary="the feedback users would give items",
         responses={401: {}, 404: {}, 413: {}, 422: {}, 503: {}})
async def feedback(call: FeedbackCall, svc: Service = Depends(ready_service)):
    """Answers 1..max_requests (user, item[, aspect]) requests with a rating and a text each.
    Concurrent calls are batched together for the model."""
    svc.check_cost(len(call.requests), call.decoding)
    served = svc.model(call.model)
    for k, r in enumerate(call.requests):
        svc.check_rating(served, r.rating, f"requests[{k}].rating")
    svc.check_known([(kind, getattr(r, f"{kind}_id"), f"requests[{k}].{kind}_id")
                     for k, r in enumerate(call.requests) for kind in ("user", "item")])
    requests = [FeedbackRequest(r.user_id, r.item_id, r.aspect, r.rating, r.seed) for r in call.requests]
    results = await run_feedback(svc, served, requests, call.decoding)
    return FeedbackAnswer(model=served.name, feedback=[answer(fb, svc) for fb in results],
                          warnings=served.warnings(call.decoding) + svc.unknown_ids(requests))


@v1.get("/users", summary="find users by id prefix")
async def search_users(q: str = Query("", max_length=256), limit: int = Query(20, ge=1, le=200),
                       svc: Service = Depends(ready_service)):
    return {"users": svc.need_catalog().search_users(q, limit)}


@v1.get("/users/{user_id:path}", summary="a user's profile and review history (newest first)",
        responses={404: {}})
async def get_user(user_id: str, limit: int = Query(50, ge=1, le=1000), svc: Service = Depends(ready_service)):
    user = svc.need_catalog().user(user_id, limit)
    if user is None:
        raise HTTPException(404, f"no user {user_id!r} in the dataset")
    return user


@v1.get("/items/{item_id:path}", summary="an item's metadata, statistics and reviews (newest first)",
        responses={404: {}})
async def get_item(item_id: str, limit: int = Query(50, ge=1, le=1000), svc: Service = Depends(ready_service)):
    item = svc.need_catalog().item(item_id, limit)
    if item is None:
        raise HTTPException(404, f"no item {item_id!r} in the dataset")
    return item
