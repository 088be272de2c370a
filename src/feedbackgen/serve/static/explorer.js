// The explorer: a small client of the public /v1 API. Every text from the data goes into the page
// through textContent, never as HTML, so a review cannot inject markup.
"use strict";

const root = document.getElementById("explorer");
const models = JSON.parse(root.dataset.models);
const hasDataset = root.dataset.hasDataset === "yes";
const $ = (id) => document.getElementById(id);
let currentUser = null; // the /v1/users answer for the open user

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}

function stars(rating) {
  const n = Math.max(0, Math.min(5, Math.round(rating)));
  return el("span", { class: "stars", title: `${rating.toFixed(2)} stars` }, "★".repeat(n) + "☆".repeat(5 - n));
}

function setStatus(text, isError = false) {
  $("status").hidden = !text;
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

// -- API ------------------------------------------------------------------------------------
const keyInput = $("api-key");
if (keyInput) {
  keyInput.value = sessionStorage.getItem("feedbackgen-key") || "";
  keyInput.addEventListener("change", () => sessionStorage.setItem("feedbackgen-key", keyInput.value));
}

async function api(path, body) {
  const headers = { "Accept": "application/json" };
  if (keyInput && keyInput.value) headers["Authorization"] = `Bearer ${keyInput.value}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method: body === undefined ? "GET" : "POST", headers,
                                       body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) {
    const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
    const retry = response.headers.get("Retry-After");
    throw new Error(`${response.status}: ${detail}${retry ? ` (retry after ${retry} s)` : ""}`);
  }
  return data;
}

// -- users ----------------------------------------------------------------------------------
async function suggestUsers(prefix) {
  if (!hasDataset) return;
  try {
    const { users } = await api(`/v1/users?q=${encodeURIComponent(prefix)}&limit=20`);
    $("user-suggestions").replaceChildren(...users.map((u) => el("option", { value: u.user_id }, `${u.reviews} reviews`)));
    if (!prefix) {
      $("suggested").replaceChildren("Most active users: ", ...users.slice(0, 6).flatMap((u, i) => [
        i ? ", " : "", el("a", { href: `?user=${encodeURIComponent(u.user_id)}`, class: "user-link",
                                 onclick: (e) => { e.preventDefault(); openUser(u.user_id); } }, u.user_id)]));
    }
  } catch (e) { setStatus(e.message, true); }
}

async function openUser(userId, itemId = null) {
  setStatus(`loading ${userId}…`);
  $("user-id").value = userId;
  try {
    currentUser = await api(`/v1/users/${encodeURIComponent(userId)}?limit=100`);
  } catch (e) {
    setStatus(e.message, true);
    return;
  }
  const u = currentUser;
  history.replaceState(null, "", `?user=${encodeURIComponent(userId)}${itemId ? `&item=${encodeURIComponent(itemId)}` : ""}`);
  $("user-title").textContent = u.user_id;
  $("user-known").textContent = u.known_to_models ? "known to the models" : "cold start: no training reviews";
  const p = u.profile;
  $("profile-stats").replaceChildren(...(p ? [
    ["reviews (train)", p.n_reviews], ["mean rating", p.rating_mean?.toFixed(2)], ["spread", p.rating_std?.toFixed(2)],
    ["typical length", `${Math.round(p.median_length ?? 0)} words`], ["talks about", (p.top_aspects || []).join(", ") || "–"],
  ] : [["reviews", u.reviews]]).map(([k, v]) => el("div", { class: "stat" }, el("span", { class: "muted" }, k), el("b", {}, String(v)))));
  $("profile-text").textContent = u.profile_text;
  $("history-count").textContent = `${u.reviews} reviews`;
  $("history").tBodies[0].replaceChildren(...u.history.map((r) => el("tr", {
      class: "pick", "data-item": r.item_id, onclick: () => pickItem(r.item_id, true) },
    el("td", {}, el("code", {}, r.item_id), r.title ? el("div", { class: "muted" }, r.title) : ""),
    el("td", {}, stars(r.rating)), el("td", {}, el("span", { class: `chip split-${r.split}` }, r.split || "")),
    el("td", {}, el("div", { class: "clamp" }, r.text || "")))));
  $("user-panel").hidden = false;
  $("ask-panel").hidden = false;
  $("results").hidden = true;
  $("recommendations").hidden = true;
  setStatus("");
  if (itemId) pickItem(itemId, true);
}

// -- items and feedback ---------------------------------------------------------------------
async function pickItem(itemId, generate) {
  $("item-id").value = itemId;
  if (currentUser) history.replaceState(null, "", `?user=${encodeURIComponent(currentUser.user_id)}&item=${encodeURIComponent(itemId)}`);
  if (hasDataset) {
    api(`/v1/items/${encodeURIComponent(itemId)}?limit=1`).then((it) => {
      $("item-info").textContent = `${it.title || it.item_id}: ${it.reviews} reviews` +
        (it.stats ? `, ${it.stats.rating_mean.toFixed(2)} stars on average` : "") +
        (it.known_to_models ? "" : " — unknown to the models (cold start)");
    }).catch((e) => { $("item-info").textContent = e.message; });
  }
  if (generate) await generateAll();
}

// The answer's warnings (a collapsed model, decoding beyond what it learnt), one line each.
function warningLines(warnings) {
  return (warnings || []).map((w) => el("p", { class: "warning small" }, `warning: ${w}`));
}

function feedbackCard(title, rating, text, note, extraClass, source, warnings) {
  // a text with a recorded source that is empty says why ("none: no sentence about this item")
  const empty = source ? `(${source})` : "(no text: this model predicts ratings only)";
  return el("article", { class: `card ${extraClass}` },
    el("h3", {}, title), el("div", { class: "rating" }, stars(rating), ` ${rating.toFixed(2)}`),
    el("p", { class: "text" }, text || empty),
    source && text ? el("p", { class: "source small" }, `source: ${source}`) : "",
    note ? el("p", { class: "muted small" }, note) : "", ...warningLines(warnings));
}

async function generateAll() {
  const userId = currentUser?.user_id || $("user-id").value.trim();
  const itemId = $("item-id").value.trim();
  const aspect = $("aspect").value.trim() || null;
  if (!userId || !itemId) return;
  const results = $("results");
  results.hidden = false;
  results.replaceChildren(...models.map((m) => el("article", { class: "card loading", "data-model": m }, el("h3", {}, m), "generating…")));
  setStatus(`generating feedback of ${userId} for ${itemId}…`);
  const request = { user_id: userId, item_id: itemId };
  if (aspect) request.aspect = aspect;
  const cards = await Promise.all(models.map(async (m) => {
    try {
      const { feedback, warnings } = await api("/v1/feedback", { model: m, requests: [request] });
      const fb = feedback[0];
      const fallback = fb.fallback && fb.fallback.length ? `fallback for unknown ${fb.fallback.join(" and ")}` : "";
      const card = feedbackCard(m, fb.rating, fb.display_text || fb.text, fallback, "generated", fb.source, warnings);
      card.dataset.model = m;
      return card;
    } catch (e) {
      return el("article", { class: "card error", "data-model": m }, el("h3", {}, m), e.message);
    }
  }));
  const real = currentUser?.history.find((r) => r.item_id === itemId);
  if (real) {
    cards.push(feedbackCard("real review", real.rating, real.text,
      `written by the user (${real.split} split${real.split === "train" ? ": the models saw it" : ": held out"})`, "real"));
  } else {
    cards.push(el("article", { class: "card real none" }, el("h3", {}, "real review"),
      el("p", { class: "muted" }, "This user has not reviewed this item.")));
  }
  results.replaceChildren(...cards);
  setStatus("");
}

async function recommend() {
  const userId = currentUser?.user_id;
  if (!userId) return;
  setStatus(`ranking items for ${userId}…`);
  try {
    const call = { user_id: userId, k: 5 };
    if (models.length) call.model = models[0];
    const recs = await api("/v1/recommend", call);
    // who ranked (a choice model, or the generator's rating) and who wrote, as /v1/models says
    $("recs-model").textContent = `ranked by ${recs.ranker}` + (recs.model ? `, explained by ${recs.model}` : "")
      + `, from ${recs.candidates} candidates (masked: ${recs.exclude})`;
    $("recs-list").replaceChildren(...recs.items.map((it) => el("li", { class: "pick", "data-item": it.item_id,
      onclick: () => pickItem(it.item_id, true) },
      el("code", {}, it.item_id), it.title ? ` ${it.title} ` : " ",
      it.predicted_rating === null ? `score ${it.score.toFixed(4)}` : stars(it.predicted_rating),
      it.predicted_rating === null ? "" : ` ${it.predicted_rating.toFixed(2)}`, recommendationText(it))));
    $("recommendations").hidden = false;
    setStatus("");
  } catch (e) { setStatus(e.message, true); }
}

// The feedback under a recommended item, with where it came from and whether it repeats.
function recommendationText(it) {
  const fb = it.feedback;
  if (!fb) return "";
  if (!fb.text) return fb.source ? el("div", { class: "muted source" }, `(${fb.source})`) : "";
  return el("div", { class: "muted" }, fb.display_text || fb.text,
    fb.source ? el("span", { class: "source small" }, ` — source: ${fb.source}`) : "",
    it.repeated ? el("span", { class: "repeated small" }, " — repeated in this list") : "");
}

// -- wiring ---------------------------------------------------------------------------------
$("user-form").addEventListener("submit", (e) => { e.preventDefault(); openUser($("user-id").value.trim()); });
$("ask-form").addEventListener("submit", (e) => { e.preventDefault(); pickItem($("item-id").value.trim(), true); });
$("recommend").addEventListener("click", recommend);
let typing = null;
$("user-id").addEventListener("input", () => {
  clearTimeout(typing);
  typing = setTimeout(() => suggestUsers($("user-id").value.trim()), 200);
});

const params = new URLSearchParams(location.search);
suggestUsers("");
if (params.get("user")) openUser(params.get("user"), params.get("item"));
if (!models.length && root.dataset.ranker) setStatus(`no generator loaded: ${root.dataset.ranker} ranks, nothing explains`);
else if (!models.length) setStatus("no model loaded", true);
