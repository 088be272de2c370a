"""The web pages: the explorer (`/`) and the annotation pages (`/annotate`).

Both are server-rendered HTML with a little vanilla JavaScript. The explorer is a client of the
public `/v1` API (so it works, and is protected, exactly like any other client); the annotation
pages post plain HTML forms, which work without JavaScript and leave nothing in the browser to lose.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from feedbackgen.evaluation.human import ANNOTATOR_PATTERN, CRITERIA, CRITERIA_HELP, AnnotationTask, Judgement
from feedbackgen.serve.service import Service

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
STATIC_DIR = HERE / "static"

pages = APIRouter(include_in_schema=False)


def _service(request: Request) -> Service:
    return request.app.state.service


@pages.get("/", response_class=HTMLResponse)
def explorer(request: Request):
    svc = _service(request)
    return templates.TemplateResponse(request, "explorer.html", {
        "models": list(svc.models) or list(svc.sources), "auth": bool(svc.key_hashes),
        "ranker": Path(svc.choice_source).name if isinstance(svc.choice_source, (str, Path)) else
        getattr(svc.choice_source, "name", None),
        "has_dataset": svc.dataset_source is not None, "annotate": svc.task is not None,
        "max_new_tokens": 25})


# -- annotation -------------------------------------------------------------------------------
def _task(request: Request) -> AnnotationTask:
    task = _service(request).task
    if task is None:
        raise HTTPException(404, "this server has no annotation task (start it with --annotate TASK)")
    return task


def _annotator(name: str | None) -> str | None:
    name = (name or "").strip()
    return name if ANNOTATOR_PATTERN.match(name) else None


def _link(k: int | str, annotator: str) -> str:
    return f"/annotate/{k}?annotator={quote(annotator)}"


@pages.get("/annotate", response_class=HTMLResponse)
def annotate_start(request: Request, annotator: str | None = None):
    task = _task(request)
    name = _annotator(annotator)
    if name is None:  # no name yet (the start page), or one we cannot keep (422, with the reason)
        error = None if annotator is None else "please use 1-64 letters, digits, spaces or . @ - _"
        return templates.TemplateResponse(request, "annotate_start.html", {"items": len(task), "error": error},
                                          status_code=200 if error is None else 422)
    k = task.next_item(name)
    return RedirectResponse(_link("done" if k is None else k, name), status_code=303)


@pages.get("/annotate/done", response_class=HTMLResponse)
def annotate_done(request: Request, annotator: str = ""):
    task = _task(request)
    name = _annotator(annotator) or ""
    return templates.TemplateResponse(request, "annotate_done.html", {
        "annotator": name, "judged": len(task.store.judged_items(name)) if name else 0, "items": len(task)})


def _item_page(request: Request, task: AnnotationTask, k: int, name: str, values: dict | None = None,
               error: str | None = None, saved: bool = False, status: int = 200):
    if values is None:
        existing = task.store.get(k, name)
        values = {}
        if existing is not None:
            values = {"preference": existing.preference, "comment": existing.comment,
                      **{f"{c}_{s.lower()}": existing.ratings[s][c] for s in ("A", "B") for c in CRITERIA}}
    judged = task.store.judged_items(name)
    return templates.TemplateResponse(request, "annotate_item.html", {
        "item": task.items[k], "k": k, "n": len(task), "annotator": name, "judged": len(judged),
        "criteria": [(c, CRITERIA_HELP[c]) for c in CRITERIA], "values": values, "error": error,
        "already": k in judged, "saved": saved,
        "prev_link": _link(k - 1, name) if k > 0 else None,
        "next_link": _link(k + 1, name) if k + 1 < len(task) else None}, status_code=status)


def _checked_item(task: AnnotationTask, k: int) -> None:
    if not 0 <= k < len(task):
        raise HTTPException(404, f"no item {k}: this task has items 0 to {len(task) - 1}")


@pages.get("/annotate/{k:int}", response_class=HTMLResponse)
def annotate_item(request: Request, k: int, annotator: str = "", saved: int = 0):
    task = _task(request)
    _checked_item(task, k)
    name = _annotator(annotator)
    if name is None:
        return RedirectResponse("/annotate", status_code=303)
    return _item_page(request, task, k, name, saved=bool(saved))


@pages.post("/annotate/{k:int}", response_class=HTMLResponse)
async def annotate_submit(request: Request, k: int, annotator: str = ""):
    task = _task(request)
    _checked_item(task, k)
    name = _annotator(annotator)
    if name is None:
        raise HTTPException(422, "annotator: missing or not a valid name")
    form = {key: v[-1] for key, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
    judgement = Judgement(item=k, annotator=name, preference=form.get("preference", ""), ratings={},
                          comment=form.get("comment", "").strip())
    error = None
    try:
        judgement.ratings = {s: {c: int(form[f"{c}_{s.lower()}"]) for c in CRITERIA} for s in ("A", "B")}
    except KeyError as e:
        error = f"{e.args[0]}: please choose a rating from 1 to 5"
    except ValueError:
        error = "ratings: each must be a whole number from 1 to 5"
    if error is None:
        try:
            judgement.validate(len(task))
        except ValueError as e:
            error = str(e)
    if error is not None:
        return _item_page(request, task, k, name, values=form, error=error, status=422)
    await asyncio.to_thread(task.store.save, judgement)
    nxt = await asyncio.to_thread(task.next_item, name, k)
    target = _link("done" if nxt is None else nxt, name)
    return RedirectResponse(target + ("" if nxt is None else "&saved=1"), status_code=303)
