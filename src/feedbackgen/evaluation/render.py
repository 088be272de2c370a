"""report.md from the report dict: `render_markdown(report)` writes the tables and notes, through
`feedbackgen.tables` (the one table writer and number formatter; `feedbackgen.tables.print_markdown`
shows such Markdown in a terminal).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from feedbackgen.data.text import detokenize
from feedbackgen.evaluation.extra import EXTRA_METRICS
from feedbackgen.evaluation.metrics import METRICS
from feedbackgen.tables import number, table_lines
from feedbackgen.types import ANSWER_KINDS

ALL_METRICS = {**METRICS, **EXTRA_METRICS}
# The headline table, in this order; every other metric goes to the second table.
MAIN_COLUMNS = ("bleu1", "bleu4", "rouge1_f", "rouge2_f", "rougeL_f", "usr", "fmr", "fcr", "div",
                "rmse", "mae", "embedding_sim", "distinct2", "memorisation", "item_grounding", "loops",
                "sentiment_rating_rho", "sentiment_pred_rating_rho")
MISSING = "—"
COLLAPSED, PARTIAL = "collapsed*", "partial†"


def metric_cell(key: str, value: Any) -> str:
    """A metric's value as report.md shows it: counts whole, ×100 scores (BLEU, ROUGE) to 2
    places, lengths, ranks and perplexities to 1, the rest to 4; MISSING when there is none."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if key.startswith(("bleu", "rouge", "self_bleu")):
        spec = ".2f"  # ×100 scores
    elif key.startswith("length_") or key.endswith("mean_rank") or key.startswith("ppl"):
        spec = ".1f"
    else:
        spec = ".4f"
    return number(value, spec, MISSING)


def arrow(direction: str) -> str:
    return {"higher": " ↑", "lower": " ↓"}.get(direction, "")


def _describe_source(source) -> str:
    if not isinstance(source, dict):
        return str(source)
    files = ", ".join(f.get("name", "?") for f in source.get("files", []))
    return f"{source.get('format', '?')} file(s) {files}" if files else str(source.get("format", "?"))


def _marks(m: dict) -> str:
    marks = [COLLAPSED] if (m.get("collapse") or {}).get("collapsed") else []
    return " ".join(marks + ([PARTIAL] if m.get("partial") else []))


def _coverage(m: dict) -> str:
    c = m["coverage"]
    return f"{c['matched']}/{c['expected']} ({100 * c['share']:.1f} %)"


def provenance_cell(m: dict) -> str:
    """'written / copied / other' text counts of a report row (other: fallback, none, unsaid)."""
    counts = m.get("provenance")
    if not counts:
        return MISSING
    other = sum(v for k, v in counts.items() if k not in ("generated", "copied"))
    return f"{counts.get('generated', 0)} / {counts.get('copied', 0)} / {other}"


def _main_table(report: dict) -> list[str]:
    models = report["models"]
    header = (["model", "target", "coverage", "texts written / copied / other"]
              + [ALL_METRICS[k].name + arrow(ALL_METRICS[k].direction) for k in MAIN_COLUMNS])
    rows = [[name + (f" ({_marks(m)})" if _marks(m) else ""), m["target"], _coverage(m), provenance_cell(m)]
            + [metric_cell(k, m["metrics"].get(k)) for k in MAIN_COLUMNS] for name, m in models.items()]
    lines = table_lines(header, rows) + [""]
    collapsed = [(n, m["collapse"]) for n, m in models.items() if (m.get("collapse") or {}).get("collapsed")]
    if collapsed:
        rule = collapsed[0][1]["rule"]
        lines += [f"\\* collapsed ({rule}): nearly one text for every request, so its DIV and ROUGE "
                  "do not mean good explanations. " + "; ".join(
                      f"{n}: USR {c['usr']:.4f}, most frequent text {100 * c['top_share']:.1f} % of outputs"
                      for n, c in collapsed), ""]
    partial = [(n, m["coverage"]) for n, m in models.items() if m.get("partial")]
    if partial:
        lines += [f"† partial (below the {100 * report['min_coverage']:.0f} % coverage threshold, allowed by "
                  "--allow-partial): its metrics describe the matched rows only. "
                  + "; ".join(f"{n}: {c['matched']} of {c['expected']}" for n, c in partial), ""]
    return lines


def _naturalness(report: dict) -> list[str]:
    scored = [(n, m["naturalness"]) for n, m in report["models"].items() if m.get("naturalness")]
    if not scored:
        return []
    first = scored[0][1]
    lines = ["## Naturalness", "",
             f"Perplexity ↓ of each text under the fixed language model `{first['model']}`: exp of the mean "
             "negative log-likelihood of the text's tokens given BOS, the text detokenised (Jelinek et al. 1977; "
             "Hugging Face, \"Perplexity of fixed-length models\"). On the same seeded sample of "
             f"{first['sample']} reference rows for every model; the references' own perplexity, on the rows "
             "each model answered, is given for scale.", ""]
    rows = [[n, str(v["generated"]["n"]), metric_cell("ppl", v["generated"]["median"]),
             metric_cell("ppl", v["generated"]["mean"]), metric_cell("ppl", v["references"]["median"]),
             metric_cell("ppl", v["references"]["mean"])] for n, v in scored]
    return lines + table_lines(["model", "texts", "median PPL", "mean PPL", "references median", "references mean"],
                          rows) + [""]


def _examples(report: dict) -> list[str]:
    if not report.get("examples"):
        return []
    lines = ["## Examples", "", "Seeded reference rows and what each model wrote for them (shown detokenised).", ""]
    for ex in report["examples"]:
        lines += [f"**user {ex['user_id']}, item {ex['item_id']}**", "",
                  f"- *reference*: {detokenize(ex['reference'])}"]
        lines += [f"- {name}: {detokenize(text)}" for name, text in ex["outputs"].items()] + [""]
    return lines


def render_markdown(report: dict) -> str:
    models = report["models"]
    ds = report["dataset"]
    lines = ["# Evaluation report", "",
             f"Dataset: {ds.get('path') or '(in memory)'}"
             + (f" (from {_describe_source(ds['source'])})" if ds.get("source") else "")
             + f"; split `{report['split']}` with {report['references']} reference rows. "
             "↑ higher is better, ↓ lower is better; — not applicable (e.g. a rating-only model). "
             "Coverage: the split's reference rows each model answered. Texts written / copied / other: "
             "how many texts the model wrote for the request, copied verbatim from a training review, or "
             "gave as a fallback or not at all (each text's `meta.provenance`).", ""]
    lines += ["## Main metrics", ""] + _main_table(report)
    rest = [k for k in ALL_METRICS if k not in MAIN_COLUMNS and any(k in m["metrics"] for m in models.values())]
    if rest:
        lines += ["## Other metrics", ""]
        rows = [[ALL_METRICS[k].name + arrow(ALL_METRICS[k].direction)]
                + [metric_cell(k, m["metrics"].get(k)) for m in models.values()] for k in rest]
        lines += table_lines(["metric"] + list(models), rows) + [""]
    lines += _naturalness(report)

    for section in report.get("sections") or ():
        text = section["markdown"].strip()
        title = "" if text.startswith("#") else f"## {section['title']}\n\nFrom `{section['file']}`.\n\n"
        lines += [title + text, ""]

    leaks = {k: v for k, v in (report.get("leak_check") or {}).items() if isinstance(v, dict)}
    if leaks:
        lines += ["## Leak check", "",
                  "References whose text (normalised: lower case, punctuation as spaces) also occurs in the "
                  "training split. A model that copies training text scores high where these shares are.", ""]
        lines += table_lines(["reference", "rows", "same user in train", "anyone in train"],
                        [[k, str(v["references"]), f"{v['in_train_same_user']} ({100 * v['share_same_user']:.1f} %)",
                          f"{v['in_train_anyone']} ({100 * v['share_anyone']:.1f} %)"] for k, v in leaks.items()])
        lines += [""]

    lines += ["## Counts", ""]
    count_keys = list(next(iter(models.values()))["counts"]) if models else []
    lines += table_lines(["model", "file"] + [k.replace("_", " ") for k in count_keys],
                    [[name, m["file"]] + [str(m["counts"][k]) for k in count_keys] for name, m in models.items()])
    lines += [""]

    answered = [(name, m["answers"]) for name, m in models.items() if m.get("answers")]
    if answered:
        lines += ["## LLM answers", "",
                  "How each JSON answer was obtained: valid as given, repaired without guessing, valid after "
                  "a retry, or the fallback (baseline rating + the user's most similar past review).", ""]
        lines += table_lines(["model"] + list(ANSWER_KINDS),
                        [[name] + [str(a[k]) for k in ANSWER_KINDS] for name, a in answered]) + [""]

    decoded = [(name, m["decoding"]) for name, m in models.items() if m["decoding"]]
    if decoded:
        lines += ["## Decoding settings", ""]
        lines += [f"- **{name}**: " + "; ".join(json.dumps(d, sort_keys=True) for d in ds_) for name, ds_ in decoded]
        lines += [""]
    lines += _examples(report)
    if report.get("plots"):
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in report["plots"]] + [""]

    lines += ["## Metric definitions", ""]
    used = [k for k in ALL_METRICS if any(k in m["metrics"] for m in models.values())]
    lines += table_lines(["key", "metric", "better", "definition", "source"],
                    [[k, ALL_METRICS[k].name, ALL_METRICS[k].direction, ALL_METRICS[k].description,
                      ALL_METRICS[k].source] for k in used]) + [""]
    return "\n".join(lines)


# -- the terminal ------------------------------------------------------------------------------
