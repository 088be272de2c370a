"""Both pages in a real browser: Playwright driving Debian's chromium, headless.

Skipped only on a machine without /usr/bin/chromium that is not CI; in CI (CI=true) they run, and
fail if chromium is missing. Screenshots go to $FEEDBACKGEN_SCREENSHOTS when set (`make
screenshots` sets it to docs/), else to the test's temporary folder.
"""

import json
import os
from pathlib import Path

import polars as pl
import pytest

from feedbackgen.types import FeedbackRequest

CHROMIUM = Path("/usr/bin/chromium")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists() and not IN_CI,
                                reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def shots(tmp_path):
    folder = Path(os.environ.get("FEEDBACKGEN_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def explorer_models(text_models, served_models):
    return {"popular": text_models["popular"], "popular_review": text_models["popular_review"],
            "mf": served_models["mf"]}


def test_explorer_shows_each_models_feedback_beside_the_real_review(page, shots, explorer_models, mi_small, live):
    from feedbackgen.serve import create_app

    models = explorer_models
    # a user with several training reviews and one held out (test) on an item the models know
    counts = mi_small.train.group_by("user_id").len()
    test = mi_small.test.filter(pl.col("item_id").is_in(mi_small.train["item_id"].implode()))
    pick = (test.join(counts, on="user_id").filter(pl.col("len").is_between(3, 8))
            .sort(["len", "user_id"], descending=[True, False]).row(0, named=True))
    user, item = pick["user_id"], pick["item_id"]
    with live(create_app(models, mi_small)) as s:
        page.goto(s.url + "/")
        page.wait_for_selector("#suggested a.user-link")  # the most active users, fetched from /v1/users
        page.fill("#user-id", user)
        page.click("#user-form button[type=submit]")
        page.wait_for_selector("#user-panel:not([hidden])")
        history = page.locator("#history tbody tr")
        assert history.count() == len(mi_small.interactions.filter(user_id=user))
        history.filter(has=page.locator(f"code:text-is('{item}')")).click()
        page.wait_for_selector("#results .card.generated >> nth=2")
        page.wait_for_selector("#results .card.real")
        cards = {c.get_attribute("data-model"): c.inner_text() for c in page.locator(".card.generated").all()}
        assert set(cards) == set(models)
        from feedbackgen.data.text import detokenize
        from feedbackgen.types import source_label
        for name, model in models.items():
            expected = model.generate([FeedbackRequest(user, item)])[0]
            assert f"{expected.rating:.2f}" in cards[name]
            if expected.text:  # shown for reading, beside where it came from
                assert detokenize(expected.text) in cards[name]
                assert f"source: {source_label(expected.meta, item)}" in cards[name]
        real = page.locator(".card.real").inner_text()
        assert pick["text"][:60] in real and "held out" in real
        assert f"item={item}" in page.url  # the view can be linked to

        page.click("#recommend")
        page.wait_for_selector("#recs-list li >> nth=4")
        assert page.locator("#recs-list li").count() == 5
        page.locator("#recs-list li").first.click()  # picks that item and generates for it
        first = page.locator("#recs-list li code").first.inner_text()
        page.wait_for_function(f"document.getElementById('item-id').value === {json.dumps(first)}")
        page.wait_for_selector(".card.generated >> nth=2")
        history.filter(has=page.locator(f"code:text-is('{item}')")).click()
        page.wait_for_selector(".card.real >> text=held out")
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(shots / "explorer.png"), full_page=True)
    assert (shots / "explorer.png").stat().st_size > 10_000


def test_explorer_shows_choice_ranked_explained_items(page, text_models, mi_small, live):
    """With --choice, the explorer's recommendations are the choice model's list (the one top-k
    path), each with the generator's feedback, and the page says who ranked and who wrote."""
    from feedbackgen.recommend import create_choice, recommend
    from feedbackgen.serve import create_app

    ease = create_choice("ease", {"search": False}).fit(mi_small)
    user = mi_small.train.group_by("user_id").len().sort(["len", "user_id"], descending=[True, False])["user_id"][0]
    expected = recommend(text_models["popular"], mi_small, [user], k=5, choice=ease)
    with live(create_app({"popular": text_models["popular"]}, mi_small, choice=ease)) as s:
        page.goto(s.url + f"/?user={user}")
        page.wait_for_selector("#user-panel:not([hidden])")
        page.click("#recommend")
        page.wait_for_selector("#recs-list li >> nth=4")
        shown = [page.locator("#recs-list li").nth(n).get_attribute("data-item") for n in range(5)]
        assert shown == expected["item_id"].to_list()
        assert "ranked by ease, explained by popular" in page.inner_text("#recs-model")
        from feedbackgen.data.text import detokenize

        first = page.locator("#recs-list li").first.inner_text()
        assert detokenize(expected["text"][0]) in first


def test_annotation_is_kept_across_reloads(page, shots, predictions, mi_small, tmp_path, live):
    from feedbackgen.evaluation.human import AnnotationTask, create_task
    from feedbackgen.serve import create_app

    files = [predictions["popular"], predictions["popular_review"]]
    for seed in range(1, 50):  # a task whose first item shows the user's past reviews (a telling screenshot)
        task_dir = create_task(files, mi_small, tmp_path / f"task{seed}", n=5, seed=seed)
        if json.loads((task_dir / "items.json").read_text())["items"][0]["user_reviews"]:
            break
    choices = {"relevance_a": 4, "fluency_a": 5, "personalisation_a": 3,
               "relevance_b": 2, "fluency_b": 4, "personalisation_b": 2}
    with live(create_app(annotate=task_dir)) as s:
        page.goto(s.url + "/annotate")
        page.fill("#annotator", "alice")
        page.click("button[type=submit]")
        page.wait_for_url("**/annotate/0?annotator=alice")
        for name, value in choices.items():
            page.check(f"input[name={name}][value='{value}']")
        page.keyboard.press("a")  # annotate.js: a / t / b choose the preference
        assert page.is_checked("input[name=preference][value=A]")
        page.fill("input[name=comment]", "A fits the item")
        page.screenshot(path=str(shots / "annotate.png"), full_page=True)
        page.click("#submit")
        page.wait_for_url("**/annotate/1?annotator=alice&saved=1")
        assert "1 judged" in page.inner_text("main")

        page.goto(s.url + "/annotate/0?annotator=alice")
        page.reload()
        assert page.is_visible("#already")
        for name, value in choices.items():
            assert page.is_checked(f"input[name={name}][value='{value}']"), name
        assert page.is_checked("input[name=preference][value=A]")
        assert page.input_value("input[name=comment]") == "A fits the item"

        page.click("#submit")  # the browser refuses an incomplete form; here it is complete: saved again
        page.wait_for_url("**/annotate/1?annotator=alice*")
        page.click("#submit")  # item 1 untouched: the required radios keep the browser from posting
        assert "/annotate/1" in page.url
    judged = AnnotationTask(task_dir).store.all()
    assert len(judged) == 1 and judged[0].preference == "A" and judged[0].ratings["A"]["fluency"] == 5


def test_docs_render_with_the_network_unreachable(page, served_models, mi_small, live):
    """Swagger UI and ReDoc come from the server itself: with every other host blocked, /docs still
    lists the API's operations and /redoc its sections."""
    from urllib.parse import urlparse

    from feedbackgen.serve import create_app

    blocked = []

    def only_localhost(route):
        host = urlparse(route.request.url).hostname
        if host in ("127.0.0.1", "localhost"):
            return route.continue_()
        blocked.append((route.request.resource_type, route.request.url))
        return route.abort("internetdisconnected")

    page.route("**/*", only_localhost)
    with live(create_app(served_models, mi_small)) as s:
        page.goto(s.url + "/docs")
        page.wait_for_selector(".opblock-summary-path", timeout=15_000)
        paths = page.locator(".opblock-summary-path").all_inner_texts()
        assert "/v1/feedback" in [p.replace("\u200b", "").strip() for p in paths]
        page.goto(s.url + "/redoc")
        # ReDoc lists each operation by its summary
        page.get_by_text("the feedback users would give items").first.wait_for(state="attached", timeout=15_000)
    # only ReDoc's "powered by" badge image lives on its vendor's CDN; no script, style or data does
    assert all(kind == "image" for kind, _ in blocked), f"the docs pages reached out for {blocked}"
