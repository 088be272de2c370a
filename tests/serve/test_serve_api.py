"""The HTTP API against a real server on 127.0.0.1, with real (small) models."""

import asyncio
import json
import threading
import time

import httpx
import numpy as np
import polars as pl
import pytest
import torch

from feedbackgen.serve import create_app
from feedbackgen.serve.keys import add_key, read_key_file
from feedbackgen.types import FeedbackRequest


@pytest.fixture(scope="module")
def server(served_models, mi_small, live):
    with live(create_app(served_models, mi_small, {"max_requests": 8, "max_body_bytes": 4096})) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def test_health_readiness_metrics_and_docs(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == ["popular", "mf"]
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "feedbackgen_ready 1.0" in metrics.text
    assert "feedbackgen_http_request_seconds_bucket" in metrics.text
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/feedback", "/v1/recommend", "/v1/users/{user_id}", "/v1/items/{item_id}"} <= set(paths)
    models = client.get("/v1/models").json()
    assert [(m["name"], m["model"], m["produces_text"]) for m in models] == [("popular", "popular", True),
                                                                             ("mf", "mf", False)]


def test_feedback_answers_each_request_with_the_models_own_output(client, served_models, known_pairs):
    pairs = known_pairs[:5]
    r = client.post("/v1/feedback", json={"requests": [{"user_id": u, "item_id": i} for u, i in pairs]})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = served_models["popular"].generate([FeedbackRequest(u, i) for u, i in pairs])
    assert body["model"] == "popular"
    assert [(f["user_id"], f["item_id"]) for f in body["feedback"]] == pairs
    assert [f["text"] for f in body["feedback"]] == [e.text for e in expected]
    assert np.allclose([f["rating"] for f in body["feedback"]], [e.rating for e in expected])
    assert all(f["fallback"] == [] for f in body["feedback"])

    mf = client.post("/v1/feedback", json={"model": "mf", "requests": [{"user_id": pairs[0][0], "item_id": pairs[0][1]}]})
    assert mf.json()["feedback"][0]["text"] == ""
    assert mf.json()["feedback"][0]["rating"] == pytest.approx(
        float(served_models["mf"].predict_rating([FeedbackRequest(*pairs[0])])[0]))


def test_unknown_ids_get_the_generators_fallback_and_say_so(client, served_models, known_pairs):
    user, item = known_pairs[0]
    r = client.post("/v1/feedback", json={"requests": [{"user_id": "no-such-user", "item_id": item},
                                                       {"user_id": user, "item_id": "no-such-item"}]})
    assert r.status_code == 200
    first, second = r.json()["feedback"]
    assert first["fallback"] == ["user"] and second["fallback"] == ["item"]
    # an explanation of an item with no training sentence is empty, and says so
    assert second["text"] == "" and second["meta"]["provenance"] == "none"
    assert second["source"] == "none: no sentence about this item"
    fb = served_models["popular"].generate([FeedbackRequest("no-such-user", item)])[0]
    assert first["source"] == f"copied: {fb.meta['source_user']}'s review" and first["text"] == fb.text


def test_recommend_ranks_unseen_items_by_predicted_rating(client, served_models, mi_small):
    user = mi_small.train.group_by("user_id").len().sort(["len", "user_id"], descending=[True, False])["user_id"][0]
    # the one ranking's default mask: the user's train and valid items (test items stay candidates)
    seen = set(mi_small.interactions.filter(pl.col("user_id") == user, pl.col("split") != "test")["item_id"])
    r = client.post("/v1/recommend", json={"user_id": user, "k": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    items = [x["item_id"] for x in body["items"]]
    assert len(items) == 4 and not seen & set(items)
    assert body["exclude"] == "train+valid" and body["ranker"] == "popular" and body["model"] == "popular"
    assert body["candidates"] == mi_small.interactions["item_id"].n_unique()
    everything = sorted(set(mi_small.interactions["item_id"]) - seen)
    scores = served_models["popular"].predict_rating([FeedbackRequest(user, i) for i in everything])
    assert [x["predicted_rating"] for x in body["items"]] == pytest.approx(sorted(scores, reverse=True)[:4], abs=1e-4)
    assert all(x["feedback"]["text"] for x in body["items"])
    texts = [x["feedback"]["text"] for x in body["items"]]
    assert [x["repeated"] for x in body["items"]] == [texts.count(t) > 1 for t in texts]
    assert all(x["feedback"]["source"].startswith("copied: ") for x in body["items"])
    from feedbackgen.data.text import detokenize

    assert [x["feedback"]["display_text"] for x in body["items"]] == [detokenize(t) for t in texts]
    assert any(x["feedback"]["display_text"] != x["feedback"]["text"] for x in body["items"])

    chosen = everything[:3]
    r = client.post("/v1/recommend", json={"user_id": user, "k": 10, "candidates": chosen, "with_feedback": False})
    assert sorted(x["item_id"] for x in r.json()["items"]) == chosen
    assert all(x["feedback"] is None for x in r.json()["items"])


def test_users_and_items(client, mi_small):
    user = mi_small.interactions["user_id"][0]
    rows = mi_small.interactions.filter(user_id=user)
    u = client.get(f"/v1/users/{user}").json()
    assert u["reviews"] == len(rows) and len(u["history"]) == len(rows)
    assert sorted(h["item_id"] for h in u["history"]) == sorted(rows["item_id"])
    assert u["profile"]["n_reviews"] == len(rows.filter(split="train"))
    assert user in u["profile_text"]
    found = client.get("/v1/users", params={"q": user[:4].lower(), "limit": 50}).json()["users"]
    assert user in [x["user_id"] for x in found] and all(x["user_id"].lower().startswith(user[:4].lower()) for x in found)

    item = rows["item_id"][0]
    it = client.get(f"/v1/items/{item}", params={"limit": 3}).json()
    assert it["reviews"] == len(mi_small.interactions.filter(item_id=item)) and len(it["history"]) == 3
    assert it["stats"]["n_reviews"] == len(mi_small.train.filter(item_id=item))

    for path in ("/v1/users/nobody-at-all", "/v1/items/nothing-at-all"):
        r = client.get(path)
        assert r.status_code == 404 and "nothing-at-all" in r.json()["detail"] or "nobody-at-all" in r.json()["detail"]


@pytest.mark.parametrize("body, field", [
    ({"requests": [{"user_id": "u"}]}, "requests[0].item_id"),
    ({"requests": [{"user_id": "", "item_id": "i"}]}, "requests[0].user_id"),
    ({"requests": [{"user_id": "u", "item_id": "i", "rating": "five"}]}, "requests[0].rating"),
    ({"requests": [{"user_id": "u", "item_id": "i", "colour": "red"}]}, "requests[0].colour"),
    ({"requests": []}, "requests"),
    ({"requests": [{"user_id": "u", "item_id": "i"}], "decoding": {"top_p": 1.5}}, "decoding.top_p"),
    ({"requests": [{"user_id": "u", "item_id": "i"}], "decoding": {"num_beams": 0}}, "decoding.num_beams"),
    ({"requests": [{"user_id": "u", "item_id": "i"}], "model": "gpt-9"}, "model"),
    ([1, 2], "body"),
])
def test_invalid_input_is_422_naming_the_field(client, body, field):
    r = client.post("/v1/feedback", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field
    assert field in r.json()["detail"] or field == "body"


def test_422_for_bad_json_and_query_parameters(client):
    r = client.post("/v1/feedback", content=b'{"requests": [', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "body"
    r = client.get("/v1/users", params={"limit": 0})
    assert r.status_code == 422 and r.json()["field"] == "limit"
    r = client.post("/v1/recommend", json={"user_id": "u", "k": 1000})
    assert r.status_code == 422 and r.json()["field"] == "k"


def test_a_body_that_is_not_utf8_is_422_naming_the_body(client, known_pairs):
    user, _ = known_pairs[0]
    latin1 = f'{{"requests": [{{"user_id": "{user}", "item_id": "caf\u00e9"}}]}}'.encode("latin-1")
    r = client.post("/v1/feedback", content=latin1, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["field"] == "body" and "not UTF-8" in body["detail"]
    offset = latin1.index("é".encode("latin-1"))
    assert f"offset {offset}" in body["detail"]


def test_a_rating_outside_the_models_scale_is_422_naming_the_range(client, known_pairs, served_models):
    user, item = known_pairs[0]
    lo, hi = served_models["popular"].rating_range
    r = client.post("/v1/feedback", json={"requests": [{"user_id": user, "item_id": item, "rating": hi},
                                                       {"user_id": user, "item_id": item, "rating": 42}]})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "requests[1].rating"
    assert r.json()["detail"] == ("invalid request: requests[1].rating: 42 is outside the rating scale of "
                                  f"model 'popular', which runs from {lo:g} to {hi:g}")
    ok = client.post("/v1/feedback", json={"requests": [{"user_id": user, "item_id": item, "rating": lo}]})
    assert ok.status_code == 200


def test_413_for_a_body_or_call_too_large(client, known_pairs):
    user, item = known_pairs[0]
    many = {"requests": [{"user_id": user, "item_id": item}] * 9}  # the server allows 8 per call
    r = client.post("/v1/feedback", json=many)
    assert r.status_code == 413 and "limit is 8" in r.json()["detail"]
    big = {"requests": [{"user_id": user, "item_id": item, "aspect": "x" * 5000}]}
    r = client.post("/v1/feedback", json=big)
    assert r.status_code == 413 and "4096 bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit must hold while the body streams in
        yield b'{"requests": [{"user_id": "' + b"u" * 3000
        yield b"u" * 3000 + b'", "item_id": "i"}]}'

    r = client.post("/v1/feedback", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert client.get("/healthz").status_code == 200


def test_garbage_never_takes_the_server_down(client, server):
    before = server.metric("feedbackgen_http_requests_total", route="/v1/feedback", method="POST", status="500")
    r = client.post("/v1/feedback", content=b"\xff\xfe\x00", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "body"  # not even text
    for body in (b"null", b'"text"', b'{"requests": null}', b'{"requests": [null]}',
                 b'{"requests": [{"user_id": 1e999, "item_id": "i"}]}', b'{"requests": [{"user_id": ["a"], "item_id": {}}]}'):
        r = client.post("/v1/feedback", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422, (body, r.text)
    assert client.put("/v1/feedback").status_code == 405
    assert client.get("/no/such/page").status_code == 404
    assert client.get("/healthz").status_code == 200
    assert server.metric("feedbackgen_http_requests_total", route="/v1/feedback", method="POST", status="500") == before


def _batch_stats(server, model="popular"):
    return (server.metric("feedbackgen_batch_size_count", model=model),
            server.metric("feedbackgen_batch_size_sum", model=model))


async def _concurrent_single_calls(url, pairs):
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        return await asyncio.gather(*(c.post("/v1/feedback", json={"requests": [{"user_id": u, "item_id": i}]})
                                      for u, i in pairs))


@pytest.mark.parametrize("max_batch", [1, 64])
def test_micro_batching_puts_concurrent_calls_into_one_batch(served_models, mi_small, known_pairs, max_batch, live):
    pairs = known_pairs[:40]
    expected = [fb.text for fb in served_models["popular"].generate([FeedbackRequest(*p) for p in pairs])]
    app = create_app(served_models, mi_small, {"max_batch": max_batch, "max_wait_ms": 200})
    with live(app) as s:
        responses = asyncio.run(_concurrent_single_calls(s.url, pairs))
        batches, answered = _batch_stats(s)
    assert [r.status_code for r in responses] == [200] * len(pairs)
    # every caller gets its own answer back, whatever batch it rode in
    assert [r.json()["feedback"][0]["text"] for r in responses] == expected
    assert answered == len(pairs)
    if max_batch == 1:
        assert batches == len(pairs)
    else:
        assert batches <= len(pairs) / 4, f"{answered} requests in {batches} batches: not batched"


def test_a_full_queue_answers_503_with_retry_after(served_models, mi_small, known_pairs, live):
    user, item = known_pairs[0]
    app = create_app(served_models, mi_small, {"max_queue": 4, "max_batch": 64, "max_wait_ms": 1500})
    with live(app) as s:
        too_many = httpx.post(s.url + "/v1/feedback", json={"requests": [{"user_id": user, "item_id": item}] * 5})
        assert too_many.status_code == 503 and int(too_many.headers["Retry-After"]) >= 1

        first: dict = {}
        waiting = threading.Thread(target=lambda: first.update(r=httpx.post(
            s.url + "/v1/feedback", json={"requests": [{"user_id": user, "item_id": item}] * 4}, timeout=30)))
        waiting.start()
        deadline = time.monotonic() + 5
        while s.metric("feedbackgen_queue_depth", model="popular") < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        # the queue now holds the 4 requests waiting for their batch to fill (1.5 s)
        refused = httpx.post(s.url + "/v1/feedback", json={"requests": [{"user_id": user, "item_id": item}]})
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["Retry-After"]) >= 1 and "overloaded" in refused.json()["detail"]
        waiting.join()
        assert first["r"].status_code == 200 and len(first["r"].json()["feedback"]) == 4
        assert s.metric("feedbackgen_rejected_requests_total", model="popular") == 6
        # room again once the batch ran
        again = httpx.post(s.url + "/v1/feedback", json={"requests": [{"user_id": user, "item_id": item}]}, timeout=30)
        assert again.status_code == 200


def test_api_keys_guard_v1_only(served_models, mi_small, tmp_path, known_pairs, live):
    keys_file = tmp_path / "keys.txt"
    key = add_key(keys_file, "tests")
    assert key not in keys_file.read_text()  # only the hash is stored
    user, item = known_pairs[0]
    body = {"requests": [{"user_id": user, "item_id": item}]}
    with live(create_app(served_models, mi_small, key_hashes=read_key_file(keys_file))) as s:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": key + "x"}, {"Authorization": key}):
            r = httpx.post(s.url + "/v1/feedback", json=body, headers=headers)
            assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer", headers
        assert httpx.get(s.url + "/v1/no-such-endpoint").status_code == 401
        assert httpx.get(s.url + f"/v1/users/{user}").status_code == 401
        assert httpx.post(s.url + "/v1/feedback", json=body, headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert httpx.get(s.url + f"/v1/users/{user}", headers={"X-API-Key": key}).status_code == 200
        for open_path in ("/healthz", "/readyz", "/metrics", "/docs", "/"):
            assert httpx.get(s.url + open_path).status_code == 200, open_path
        assert s.metric("feedbackgen_http_errors_total", route="other", status="401") >= 4


def test_reject_policy_gives_404_with_the_reason(served_models, mi_small, known_pairs, live):
    user, item = known_pairs[0]
    with live(create_app(served_models, mi_small, {"unknown": "reject"})) as s:
        r = httpx.post(s.url + "/v1/feedback", json={"requests": [{"user_id": user, "item_id": item},
                                                                  {"user_id": user, "item_id": "no-such-item"}]})
        assert r.status_code == 404
        assert r.json()["field"] == "requests[1].item_id" and "no-such-item" in r.json()["detail"]
        # every unknown id of a call is named, not only the first
        many = [{"user_id": f"nobody-{k}", "item_id": f"nothing-{k}"} for k in range(3)]
        r = httpx.post(s.url + "/v1/feedback", json={"requests": [{"user_id": user, "item_id": item}, *many]})
        assert r.status_code == 404 and r.json()["field"] == "requests[1].user_id"
        detail = r.json()["detail"]
        assert detail.startswith("6 unknown id(s)")
        for k in range(3):
            assert f"requests[{k + 1}].user_id = user 'nobody-{k}'" in detail
            assert f"requests[{k + 1}].item_id = item 'nothing-{k}'" in detail
        lots = [{"user_id": user, "item_id": f"nothing-{k}"} for k in range(25)]
        detail = httpx.post(s.url + "/v1/feedback", json={"requests": lots}).json()["detail"]
        assert "nothing-19'" in detail and "nothing-20'" not in detail and "and 5 more" in detail
        r = httpx.post(s.url + "/v1/recommend", json={"user_id": "no-such-user"})
        assert r.status_code == 404 and r.json()["field"] == "user_id"
        ok = httpx.post(s.url + "/v1/feedback", json={"requests": [{"user_id": user, "item_id": item}]})
        assert ok.status_code == 200 and ok.json()["feedback"][0]["fallback"] == []


def test_not_ready_until_models_load(tmp_path, known_pairs, live):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model": "popular", "config": {}}))  # no state.json
    with live(create_app([broken]), wait_ready=False) as s:
        assert httpx.get(s.url + "/healthz").status_code == 200
        deadline = time.monotonic() + 10
        while "failed" not in (ready := httpx.get(s.url + "/readyz")).json()["status"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.status_code == 503 and "state.json" in ready.json()["status"]
        user, item = known_pairs[0]
        r = httpx.post(s.url + "/v1/feedback", json={"requests": [{"user_id": user, "item_id": item}]})
        assert r.status_code == 503 and r.headers["Retry-After"] == "2"


# -- the cost of one call, and the server's own settings ---------------------------------------------

@pytest.mark.parametrize("decoding, n, status, limit", [
    ({"num_beams": 32, "max_new_tokens": 1024}, 64, 422, "max_new_tokens"),  # issue 13's call, on the defaults
    ({"num_beams": 5}, 1, 422, "max_beams"),
    ({"max_new_tokens": 129}, 1, 422, "max_new_tokens"),
    ({"max_new_tokens": 5000}, 1, 422, "max_new_tokens"),  # over Decoding's own bound too: same message
    ({"num_beams": 33}, 1, 422, "max_beams"),
    ({"num_beams": 4, "max_new_tokens": 128}, 17, 422, "max_call_tokens"),  # 17 × 4 × 128 > 8192
    ({}, 65, 413, "max_requests"),
])
def test_a_call_over_the_cost_limits_is_refused_naming_the_limit(served_models, known_pairs, decoding, n, status,
                                                                  limit):
    from fastapi.testclient import TestClient

    user, item = known_pairs[0]
    with TestClient(create_app(served_models)) as c:  # the default limits
        r = c.post("/v1/feedback", json={"requests": [{"user_id": user, "item_id": item}] * n, "decoding": decoding})
        assert r.status_code == status, r.text
        assert limit in r.json()["detail"], r.text
        if status == 422:
            assert r.json()["field"] == ("decoding" if limit == "max_call_tokens" else
                                         "decoding." + {"max_beams": "num_beams"}.get(limit, limit))
            assert "over this server's limit of" in r.json()["detail"], r.text
            assert "less than or equal" not in r.json()["detail"], r.text
        within = c.post("/v1/feedback", json={"requests": [{"user_id": user, "item_id": item}] * 16,
                                              "decoding": {"num_beams": 4, "max_new_tokens": 128}})
        assert within.status_code == 200, within.text
        k = c.post("/v1/recommend", json={"user_id": user, "k": 65, "candidates": [item]})
        assert k.status_code == 413 and "max_requests" in k.json()["detail"]


def test_served_models_generate_on_the_server_threads_not_their_training_setting(
        served_models, mi_small, known_pairs, tmp_path, monkeypatch, post_concurrently):
    from feedbackgen.models import create
    from feedbackgen.models.peter import Peter

    before = torch.get_num_threads()
    peter = create("peter", {"target": "review", "emsize": 16, "nhead": 2, "nlayers": 1, "nhid": 32,
                             "max_epochs": 1, "progress": False, "num_threads": 1}).fit(mi_small)
    peter.save(tmp_path / "peter")
    seen = []
    plain = Peter.generate_text

    def recording(self, requests, decoding, *args, **kwargs):
        out = plain(self, requests, decoding, *args, **kwargs)
        seen.append(torch.get_num_threads())
        return out

    monkeypatch.setattr(Peter, "generate_text", recording)
    user, item = known_pairs[0]
    body = {"requests": [{"user_id": user, "item_id": item}], "decoding": {"do_sample": True, "seed": 7}}
    try:
        torch.set_num_threads(1)
        app = create_app({"peter": tmp_path / "peter", "popular": served_models["popular"]}, None, {"threads": 2})
        responses, _ = post_concurrently(app, [body, {**body, "model": "popular"}, body])
        assert [r.status_code for r in responses] == [200] * 3
        assert seen and set(seen) == {2}, seen
    finally:
        torch.set_num_threads(before)


# -- failure is announced to the client (issue 15) ---------------------------------------------------

@pytest.fixture(scope="module")
def peter_folders(mi_small, tmp_path_factory):
    """A real tiny peter (1 epoch) saved, and a copy whose training.json records a collapse: the
    signal and warning that training writes for a model answering every request with one text."""
    import shutil

    from feedbackgen.models import collapse, create

    root = tmp_path_factory.mktemp("peter")
    create("peter", {"emsize": 16, "nhead": 2, "nlayers": 1, "nhid": 32, "max_epochs": 1, "progress": False,
                     "num_threads": 1}).fit(mi_small).save(root / "peter")
    shutil.copytree(root / "peter", root / "collapsed")
    summary = json.loads((root / "peter" / "training.json").read_text())
    sig = collapse.signal(["wooden " * 5] * 200)
    summary["collapse"] = {**sig, "warning": collapse.message("peter", sig, 300, 1)}
    (root / "collapsed" / "training.json").write_text(json.dumps(summary))
    return root


@pytest.fixture(scope="module")
def peter_client(peter_folders, served_models, mi_small, live):
    models = {"peter": peter_folders / "peter", "collapsed": peter_folders / "collapsed",
              "popular": served_models["popular"]}
    with live(create_app(models, mi_small)) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        yield c


def test_models_show_the_collapse_signal_recorded_in_training(peter_client, peter_folders):
    models = {m["name"]: m for m in peter_client.get("/v1/models").json()}
    recorded = json.loads((peter_folders / "collapsed" / "training.json").read_text())["collapse"]
    assert models["collapsed"]["collapsed"] is True and models["collapsed"]["collapse"] == recorded
    own = json.loads((peter_folders / "peter" / "training.json").read_text())["collapse"]
    assert models["peter"]["collapse"] == own and models["peter"]["collapsed"] is own["collapsed"]
    # a model that records no signal says so, rather than claiming to be healthy
    assert models["popular"]["collapsed"] is None and models["popular"]["collapse"] is None


def test_every_answer_of_a_collapsed_model_carries_its_warning(peter_client, peter_folders, known_pairs):
    warning = json.loads((peter_folders / "collapsed" / "training.json").read_text())["collapse"]["warning"]
    user, item = known_pairs[0]
    body = {"model": "collapsed", "requests": [{"user_id": u, "item_id": i} for u, i in known_pairs[:3]]}
    for _ in range(2):  # every call, not once per process
        r = peter_client.post("/v1/feedback", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["warnings"] == [warning.removeprefix("warning: ")]
    assert "answers every request alike" in r.json()["warnings"][0]
    rec = peter_client.post("/v1/recommend", json={"model": "collapsed", "user_id": user, "k": 1, "candidates": [item]})
    assert rec.status_code == 200 and rec.json()["warnings"] == r.json()["warnings"]
    healthy = peter_client.post("/v1/feedback", json={**body, "model": "popular"})
    assert healthy.status_code == 200 and healthy.json()["warnings"] == []


def test_max_new_tokens_beyond_what_the_model_learnt_is_warned_in_the_answer(peter_client, peter_folders,
                                                                             known_pairs):
    from feedbackgen.models import load

    limit = load(peter_folders / "peter").max_text_tokens
    requests = [{"user_id": u, "item_id": i} for u, i in known_pairs[:2]]

    def decoding_warnings(decoding):
        r = peter_client.post("/v1/feedback", json={"model": "peter", "requests": requests, "decoding": decoding})
        assert r.status_code == 200, r.text
        return [w for w in r.json()["warnings"] if "max_new_tokens" in w]

    over = decoding_warnings({"max_new_tokens": limit + 10})
    assert len(over) == 1 and f"max_new_tokens={limit + 10}" in over[0] and f"({limit} tokens" in over[0]
    assert decoding_warnings({"max_new_tokens": limit}) == []
    assert decoding_warnings({}) == []  # the default is not the client's ask
