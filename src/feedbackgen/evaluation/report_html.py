"""report.html: the evaluation report as one self-contained page, opened in any browser.

    render_html(report, out_dir) -> str      (evaluate writes it to out_dir/report.html)

The first screen says in words what was measured and what it means (`summary_paragraphs`), then a
headline table (provenance and item grounding beside the text and rating metrics), the plots (the
report's, then the PNGs beside each included section, such as fidelity's panel.png), and the whole
of report.md below. Every image is inlined as a base64 PNG and the style sheet is in the
page, so the file can be mailed or archived alone and opens offline. The Markdown is converted by
the small converter below (headings, tables, lists, code, images, emphasis), enough for report.md
and the sections other commands write; it escapes all text, so a review cannot inject HTML.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from feedbackgen.evaluation.render import ALL_METRICS, MISSING, arrow, metric_cell, provenance_cell, render_markdown
from feedbackgen.tables import table_lines

# The headline table's metric columns, in this order (each shown only when some model has it).
HEADLINE = ("item_grounding", "rougeL_f", "bleu4", "embedding_sim", "usr", "memorisation", "rmse")

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1100px;
padding:1.5rem 2rem 4rem;color:#1d1d1f;line-height:1.5}
h1{font-size:1.7rem;margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
.lead{background:#f3f6fc;border-left:4px solid #3f51b5;padding:.8rem 1.2rem;border-radius:4px}
.lead p{margin:.5rem 0}.muted{color:#666;font-size:.9rem}
table{border-collapse:collapse;margin:.8rem 0;font-size:.85rem;display:block;overflow-x:auto}
th,td{border:1px solid #d8d8d8;padding:.25rem .5rem;text-align:right;white-space:nowrap}
th{background:#f5f5f5;white-space:normal;vertical-align:bottom}td:first-child,th:first-child{text-align:left}
img{max-width:100%;height:auto;margin:.5rem 0}code{background:#f2f2f2;padding:0 .2rem;border-radius:3px}
pre{background:#f7f7f7;padding:.6rem;overflow-x:auto}details summary{cursor:pointer;font-weight:600}
"""


def _png_data_uri(path: Path) -> str | None:
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _inline(text: str) -> str:
    """Escape `text`, then render `code`, **bold** and *emphasis*."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        part = html.escape(part, quote=False)
        part = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", part)
        part = re.sub(r"(?<![\w*\\])\*(?!\s)(.+?)(?<!\s)\*(?!\w)", r"<em>\1</em>", part)
        out.append(part.replace("\\*", "*").replace("\\|", "|"))
    return "".join(out)


def _table_html(lines: list[str]) -> str:
    split = lambda line: [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]  # noqa: E731
    header, rows = split(lines[0]), [split(line) for line in lines[2:]]
    head = "".join(f"<th>{_inline(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_to_html(md: str, image_dirs: list[Path]) -> str:
    """The Markdown subset report.md uses, as HTML; images found in `image_dirs` are inlined."""
    out: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
            out.append("<pre>" + html.escape("\n".join(lines[i + 1:end])) + "</pre>")
            i = end + 1
            continue
        if line.lstrip().startswith("|"):
            end = next((j for j in range(i, len(lines)) if not lines[j].lstrip().startswith("|")), len(lines))
            out.append(_table_html(lines[i:end]))
            i = end
            continue
        heading = re.match(r"(#{1,6}) (.*)", line)
        image = re.fullmatch(r"!\[([^\]]*)\]\(([^)]+)\)", line.strip())
        if heading:
            level = min(len(heading.group(1)) + 1, 6)  # the page's own title is the only h1
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif image:
            uri = next((u for d in image_dirs if (u := _png_data_uri(d / image.group(2)))), None)
            if uri:
                out.append(f'<img alt="{html.escape(image.group(1))}" src="{uri}">')
        elif line.startswith("- "):
            end = next((j for j in range(i, len(lines)) if not lines[j].startswith(("- ", "  "))), len(lines))
            items = re.split(r"\n- ", "\n".join(lines[i:end])[2:])
            out.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in items) + "</ul>")
            i = end
            continue
        elif line.strip():
            end = next((j for j in range(i, len(lines))
                        if not lines[j].strip() or lines[j].startswith(("#", "|", "- ", "```", "!["))), len(lines))
            out.append("<p>" + _inline(" ".join(lines[i:end])) + "</p>")
            i = max(end, i + 1)
            continue
        i += 1
    return "\n".join(out)


def _metric(m: dict, key: str) -> float | None:
    return m["metrics"].get(key)


def summary_paragraphs(report: dict) -> list[str]:
    """What was measured and what it means, in plain words (HTML), from the report's figures."""
    models, n_refs = report["models"], report["references"]
    source = report["dataset"].get("path") or "the dataset"
    texts = {n: m for n, m in models.items() if m["has_text"]}
    target = next(iter(texts.values()))["target"] if texts else "review"
    said = [f"<strong>What was measured.</strong> {len(models)} model{'s' if len(models) > 1 else ''} gave their feedback — a star rating"
            + (f" and a text ({html.escape(target)})" if texts else "") + f" — for each of the {n_refs} "
            f"held-out <code>{html.escape(report['split'])}</code> reviews of <code>{html.escape(str(source))}</code>, "
            "which no model saw in training; each answer is compared with what that user really wrote and "
            "how they really rated."]
    writers = {n: m for n, m in texts.items() if (m.get("provenance") or {}).get("generated")}
    copiers = {n: m for n, m in texts.items() if (m.get("provenance") or {}).get("copied")}
    if texts:
        best = max(texts, key=lambda n: _metric(texts[n], "rougeL_f") or -1)
        line = (f"<strong>Text.</strong> Closest to the real texts by ROUGE-L: <strong>{html.escape(best)}</strong> "
                f"({metric_cell('rougeL_f', _metric(texts[best], 'rougeL_f'))}).")
        if writers:
            line += (" Written by the model for the request (not copied): "
                     + ", ".join(f"{html.escape(n)} ({m['provenance']['generated']} of {m['coverage']['matched']})"
                                 for n, m in writers.items()) + ".")
        if copiers:
            line += (" Copied verbatim from training reviews, each naming the review it came from: "
                     + ", ".join(f"{html.escape(n)} ({m['provenance']['copied']})" for n, m in copiers.items())
                     + ". A copied sentence is fluent by construction; what a copier cannot do is say something "
                       "no one has written yet.")
        grounded = {n: _metric(m, "item_grounding") for n, m in texts.items() if _metric(m, "item_grounding") is not None}
        if grounded:
            line += (" Item grounding — the share of texts whose nearest training sentence is about the same item, "
                     "i.e. that talk about the right product: "
                     + ", ".join(f"{html.escape(n)} {v:.2f}" for n, v in grounded.items()) + ".")
        said.append(line)
        collapsed = [n for n, m in texts.items() if (m.get("collapse") or {}).get("collapsed")]
        if collapsed:
            said.append("<strong>Warning.</strong> " + ", ".join(map(html.escape, collapsed))
                        + " wrote nearly the same text for every request (collapsed): trained too briefly or on too "
                          "little data; its text metrics do not mean good feedback.")
    if writers and copiers and (meaning := _meaning(writers, copiers)):
        said.append(meaning)
    rated = {n: _metric(m, "rmse") for n, m in models.items() if _metric(m, "rmse") is not None}
    if rated:
        best = min(rated, key=rated.get)
        said.append(f"<strong>Ratings.</strong> Lowest error: <strong>{html.escape(best)}</strong>, off by "
                    f"{rated[best]:.2f} stars (RMSE)" + (f"; the others up to {max(rated.values()):.2f}"
                                                         if len(set(rated.values())) > 1 else "") + ".")
    panel = _panel_sentence(report.get("sections") or ())
    if panel:
        said.append(panel)
    if report.get("sections"):
        said.append("<strong>Also below:</strong> " + "; ".join(html.escape(s["title"]) for s in report["sections"])
                    + " — written by the commands named in each section.")
    return said


def _panel_sentence(sections) -> str:
    """The recommender panel's verdict in words, read from a `fidelity --protocol recommenders`
    section's agreement line ("Kendall τ ... ordered right"); empty when no section has one."""
    for section in sections:
        tau = re.search(r"Kendall τ (-?[0-9.]+) \(95% CI (-?[0-9.]+)–(-?[0-9.]+)\)", section["markdown"])
        if not tau:
            continue
        pairs = re.search(r"(\d+) of (\d+) significantly different pairs ordered right", section["markdown"])
        value = float(tau.group(1))
        agreement = ("the same order" if value >= 0.7 else "much the same order" if value >= 0.4
                     else "a loosely related order" if value > 0.1 else "no better than a random order")
        line = (f"<strong>Simulated users judging recommenders.</strong> A simulated user judged the lists of a "
                f"panel of recommenders, and its ranking of them was set beside what real users went on to take in "
                f"the test split: it puts them in {agreement} (Kendall τ {tau.group(1)}, 95% interval "
                f"{tau.group(2)} to {tau.group(3)}; 1 is the real order, 0 unrelated)")
        if pairs:
            line += f", and orders {pairs.group(1)} of the {pairs.group(2)} clearly different pairs right"
        return line + ". Details in the section below."
    return ""


def _meaning(writers: dict, copiers: dict) -> str:
    """One sentence weighing the best writing model against the best copying one."""
    rouge = lambda group: max(group, key=lambda n: _metric(group[n], "rougeL_f") or -1)  # noqa: E731
    w, c = rouge(writers), rouge(copiers)
    wr, cr = _metric(writers[w], "rougeL_f"), _metric(copiers[c], "rougeL_f")
    if wr is None or cr is None:
        return ""
    verdict = "ahead of" if wr > cr else "behind"
    line = (f"<strong>What it means.</strong> {html.escape(w)} writes its own sentences and is {verdict} the best "
            f"copier, {html.escape(c)}, on ROUGE-L ({wr:.2f} against {cr:.2f})")
    wm, cm = _metric(writers[w], "memorisation"), _metric(copiers[c], "memorisation")
    if wm is not None and cm is not None:
        line += (f"; {100 * wm:.0f} % of its texts repeat 8 words of a training review, against "
                 f"{100 * cm:.0f} % of {html.escape(c)}'s")
    wg, cg = _metric(writers[w], "item_grounding"), _metric(copiers[c], "item_grounding")
    if wg is not None and cg is not None and wg < cg - 0.2:
        return line + (f". But only {100 * wg:.0f} % of its texts are about the item they explain, against "
                       f"{100 * cg:.0f} % of {html.escape(c)}'s: it has learnt how these users write more than what "
                       "they say about each item. Train it longer, or use a bigger generator, before relying on its "
                       "explanations; the copier stays the baseline to beat.")
    if wg is not None and cg is not None:
        line += f", and it stays on the item about as often (item grounding {wg:.2f} against {cg:.2f})"
    return line + ": it describes items in words no training review holds."


def _headline_table(report: dict) -> str:
    models = report["models"]
    keys = [k for k in HEADLINE if any(_metric(m, k) is not None for m in models.values())]
    header = ["model", "texts written / copied / other"] + [ALL_METRICS[k].name + arrow(ALL_METRICS[k].direction)
                                                             for k in keys]
    rows = [[name, provenance_cell(m)] + [metric_cell(k, _metric(m, k)) for k in keys] for name, m in models.items()]
    return _table_html(table_lines(header, rows))


def render_html(report: dict, out_dir: Path) -> str:
    """The whole page (module docstring); plots are read from `out_dir`, section images from beside
    each section's file."""
    out_dir = Path(out_dir)
    image_dirs = [out_dir] + [Path(s["file"]).parent for s in report.get("sections") or ()]
    pictures = [out_dir / p for p in report.get("plots") or ()]
    pictures += [png for s in report.get("sections") or () for png in sorted(Path(s["file"]).parent.glob("*.png"))]
    plots = "".join(f'<img alt="{html.escape(p.name)}" src="{uri}">' for p in pictures if (uri := _png_data_uri(p)))
    shown = {f"![{Path(p).stem}]({p})" for p in report.get("plots") or ()} | {"## Plots"}  # already at the top
    body = "\n".join(line for line in render_markdown(report).splitlines()[1:]  # without its "# ..." title
                     if line.strip() not in shown)
    lead = "".join(f"<p>{p}</p>" for p in summary_paragraphs(report))
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>feedbackgen report</title><style>{STYLE}</style></head><body>"
            f"<h1>feedbackgen report</h1><p class=\"muted\">↑ higher is better, ↓ lower is better, "
            f"{MISSING} not applicable.</p><div class=\"lead\">{lead}</div>"
            f"<h2>At a glance</h2>{_headline_table(report)}{plots}"
            f"<details open><summary>The full report</summary>{markdown_to_html(body, image_dirs)}</details>"
            f"</body></html>")
