"""Rendering the entries to ``README.md`` and ``index.html``: same entries, same bytes.

One table per (dataset, threat model, suite and version), ranked at the headline radius, the newest suite
version first: numbers from different suites are never ranked together (a weaker suite would rank its
entries higher). Entries that failed verification come last, unranked. Certified entries
(``.certified``) get a table of their own after them, ranked by certified accuracy at 0.1 then 0.05;
neither kind ever appears in the other's ranking.
"verified" is shown only for a record that binds to the entry (``Entry.status``).
Every text from an entry is escaped (HTML, and markdown syntax in the README); the
page loads nothing from elsewhere and its Content-Security-Policy admits only its own style and script.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np

from .._util import atomic_write, radius_key
from .certified import (
    CERTIFIED_RADII,
    CertifiedEntry,
    certified_paths,
    correct_and_radius,
    load_certified,
    validate_certified_all,
)
from .io import Entry, entry_paths, load_entry, validate_all
from .ranking import ALPHA, Outcomes, range_text, rank_ranges
from .schema import HEADLINE_RADIUS, EntryError, robust_mask

__all__ = ["render", "write_rendered"]

_STATUS_TEXT = {
    "verified": "verified",
    "examples-verified": "examples verified, not re-run",
    "failed": "FAILED verification",
    "claimed": "claimed (not verified)",
    # A record copied from another entry, or older than the entry's last change: it proves nothing here.
    "unbound": "claimed; verification does not match the entry",
}
_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22"]


@dataclasses.dataclass(frozen=True)
class _Table:
    dataset: str
    threat: str
    suite: tuple[str, int]  # (name, version): entries measured with other suites get other tables
    headline: str
    radii: list[str]
    entries: list[Entry]  # in ranked order; failed entries last


def _tables(entries: list[Entry]) -> list[_Table]:
    """Group entries by (dataset, threat id, suite), choose each group's headline radius and rank it."""
    groups: dict[tuple[str, str, str, int], list[Entry]] = {}
    for e in entries:
        d = e.data
        key = (d["dataset"]["name"], d["threat"]["id"], d["suite"]["name"], int(d["suite"]["version"]))
        groups.setdefault(key, []).append(e)
    out = []
    for (ds, tid, suite, version), group in sorted(groups.items(), key=lambda kv: (*kv[0][:3], -kv[0][3])):
        keys = {k for e in group for k in e.data["claimed"]["robust_accuracy"]}
        default = HEADLINE_RADIUS.get(ds)
        if default is not None and radius_key(default) in keys:
            headline = radius_key(default)
        else:  # the entries' most common choice, the smallest radius on a tie
            votes = Counter(e.data["claimed"]["headline_radius"] for e in group)
            headline = min(votes, key=lambda k: (-votes[k], float(k)))

        def rank(e: Entry, headline=headline):
            acc = e.data["claimed"]["robust_accuracy"].get(headline)
            return (e.status == "failed", acc is None, -(acc or 0.0), -e.data["claimed"]["clean_accuracy"],
                    e.data["name"].casefold(), e.data["id"])

        radii = sorted(keys, key=float)
        out.append(_Table(ds, tid, (suite, version), headline, radii, sorted(group, key=rank)))
    return out


def _robust(e: Entry, radius: str) -> Outcomes:
    """Dataset indices and robustness at ``radius`` of an entry's examples (the ball's certification rule)."""
    tol = e.data["threat"]["tolerances"]["cost_rel"]
    return e.arrays["index"].astype(np.int64), robust_mask(e.arrays, float(radius), tol)


def _with_ranges(entries: list, outcomes) -> list[tuple]:
    """``(entry, rank, rank range)`` in the given (ranked) order; failed entries get "–" for both."""
    ranked = [e for e in entries if e.status != "failed"]
    ranges = iter(rank_ranges([outcomes(e) for e in ranked]))
    out, rank = [], 0
    for e in entries:
        if e.status == "failed":
            out.append((e, "–", "–"))
        else:
            out.append((e, str(rank := rank + 1), range_text(*next(ranges))))
    return out


def _ranks(t: _Table) -> list[tuple[Entry, str, str]]:
    """Each entry of ``t`` in ranked order with its rank (1, 2, ...) and rank range ("–" when failed)."""
    return _with_ranges(t.entries, lambda e: _robust(e, t.headline))


def _pct(a: float | None) -> str:
    return "–" if a is None else f"{100 * a:.1f}%"


def _status(e: Entry) -> str:
    v = e.data["verification"]
    return _STATUS_TEXT[e.status] + (f" ({v['at'][:10]})" if v and e.status != "unbound" else "")


def _md(text: str) -> str:
    """Markdown-safe cell text: HTML-escaped, markdown syntax characters backslash-escaped."""
    s = html.escape(str(text), quote=False)
    return re.sub(r"([\\`*_\[\]|])", r"\\\1", s)


def _md_url(url: str) -> str:
    return url.replace("(", "%28").replace(")", "%29").replace(" ", "%20")


def _threat_line(th: dict) -> str:
    t = th["tolerances"]
    window = f"{th['kernel_size']}x{th['kernel_size']} window" if th["kernel_size"] else "dense plans"
    box = "box [0, 1]" if th["box"] is not None else "no box"
    return (f"p = {th['p']}, {window}, {box}; eps in {th['eps_units']}; verification tolerances: "
            f"mass {t['mass_rel']:g} (relative), cost {t['cost_rel']:g} (relative), box {t['box_abs']:g}")


_MD_INTRO = """# Wasserstein robustness leaderboard

Robust accuracy under one exactly defined Wasserstein threat model (see `THREAT_MODEL.md` of the
project): every adversarial example counted was verified inside the ball, and every entry commits
up to 100 of them so anyone can re-check them exactly. Rows are ranked by robust accuracy at the headline
radius, then by clean accuracy; entries that failed verification are listed last, unranked.
Each table holds the entries of one suite version, the newest first: a weaker suite leaves more
examples robust, so numbers from different suites are never ranked together.
"Rank range" says which places the evidence supports: entries are compared example by example on the
test images both evaluated, at the ranking radius (exact McNemar test, Holm-corrected over all pairs of
the table, 5 % family-wise), and an entry is placed behind another only where that test separates them.
Accuracies are percentages of the evaluated examples; clean errors count as broken at radius 0.
"verified" means `verify` re-ran the suite with the entry's checkpoint and its record binds to the
entry as committed; a record that does not is shown as "verification does not match the entry".

Generated by `wattack-leaderboard render` from `entries/` (do not edit by hand). Add a run with
`wattack-leaderboard add <results.json> ...`, re-check one with
`wattack-leaderboard verify <entry.json> --checkpoint <file>`.
"""


def _render_markdown(tables: list[_Table], certified: list[CertifiedEntry]) -> str:
    """Return README.md: the intro, per table its threat model and a pipe table, then the certified table."""
    out = [_MD_INTRO]
    if not tables:
        out.append("\nNo entries yet.\n")
    for t in tables:
        th = t.entries[0].data["threat"]
        out.append(f"\n## {_md(t.dataset)} · {_md(t.threat)} · {_md(_suite_text(t))}\n")
        out.append(f"\nThreat model: {_md(_threat_line(th))}. Ranked at radius {t.headline}.\n")
        head = ["Rank", "Rank range", "Model", "Architecture", "Training", "Clean"] + [
            f"**{r}**" if r == t.headline else r for r in t.radii] + ["Suite", "n", "Status"]
        out.append("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n")
        for e, rank, span in _ranks(t):
            d, cl = e.data, e.data["claimed"]
            cells = [rank, span, f"[{_md(d['name'])}]({_md_url(d['source'])})", _md(d["architecture"]),
                     _md(d["training"]), _pct(cl["clean_accuracy"])]
            cells += [_pct(cl["robust_accuracy"].get(r)) for r in t.radii]
            cells += [_md(f"{d['suite']['name']} v{d['suite']['version']}"), str(cl["n_examples"]),
                      _md(_status(e))]
            out.append("| " + " | ".join(cells) + " |\n")
    out.append(_certified_markdown(_certified_ranked(certified)))
    return "".join(out)


# --------------------------------------------------------------------------------------- certified table
_CERTIFIED_TITLE = "Certified (randomized smoothing in flow space)"
_CERTIFIED_KEYS = [radius_key(r) for r in CERTIFIED_RADII]
_CERTIFIED_RANKING = "0.1"  # the radius of the rank ranges (ties there are ordered by 0.05)
_CERTIFIED_INTRO = (
    "Certified accuracy of flow-space randomized smoothing (Levine & Feizi 2020), certified with Cohen "
    "et al.'s CERTIFY by wattack-certify: the fraction of examples whose smoothed prediction is correct "
    "with a certified radius strictly above r (units of eps, W1, p = 1). A certificate covers every change "
    "that preserves each channel's mass exactly, with any window size, at confidence 1 - alpha per "
    "example; n is the number of noise draws per example. Ranked by certified accuracy at 0.1, then 0.05; "
    "never ranked with the empirical tables; the rank range compares entries at 0.1 as the empirical "
    "tables do at their radius (exact McNemar test on the examples both certified, Holm-corrected, 5 % "
    "family-wise). \"verified\" means verify re-ran CERTIFY with the committed "
    "checkpoint, reproduced the counts and the certified accuracy, and its record binds to the entry. "
    "Read every row against the mass-only classifier (architecture mnist_convnet-massprior with a zeroed "
    "network): the threat model never changes an image's total mass, so the class most frequent at that "
    "mass is certified at every radius the draws allow; a certified accuracy below it owes nothing to "
    "the image's content."
)
_MD_CERTIFIED_HOWTO = """
### Certified entries

Add a `wattack-certify` run folder with
`wattack-leaderboard add-certified RUN_DIR --id ID --name NAME --authors ... --source URL --architecture ARCH`
(its `results.json` and `base_model.pt`, or `--checkpoint FILE` for a run that did not train its model);
it writes `certified/<dataset>/W1/<id>.json` and the base model's state dict `<id>.pt`.
`wattack-leaderboard validate` recomputes every p_lower, radius and claimed accuracy from the counts and
checks the checkpoint's hashes; `wattack-leaderboard verify --id ID [--examples K]` re-runs CERTIFY.
"""


def _certified(e: CertifiedEntry, radius: str = _CERTIFIED_RANKING) -> Outcomes:
    """Dataset indices and certification at ``radius`` (correct, radius strictly above) of its examples."""
    correct, certified = correct_and_radius(e.data)
    return np.asarray(e.data["examples"]["index"], dtype=np.int64), correct & (certified > float(radius))


def _certified_ranked(entries: list[CertifiedEntry]) -> list[tuple[CertifiedEntry, str, str]]:
    """Sort by certified accuracy at 0.1, then 0.05 (failed verifications last, unranked); add rank and range.

    The rank range compares the entries at 0.1 only (entries tied there are ordered by 0.05).
    """
    def key(e: CertifiedEntry):
        acc = e.data["claimed"]["certified_accuracy"]
        return (e.status == "failed", -acc.get("0.1", -1.0), -acc.get("0.05", -1.0),
                e.data["name"].casefold(), e.data["id"])

    return _with_ranges(sorted(entries, key=key), _certified)


def _certified_status(e: CertifiedEntry) -> str:
    """Status text; a verification of the first K examples only says so."""
    v, n = e.data["verification"], e.data["claimed"]["n_examples"]
    text = _STATUS_TEXT[e.status]
    if e.status == "verified" and v["examples_checked"] < n:
        text = f"verified on the first {v['examples_checked']} of {n} examples"
    return text + (f" ({v['at'][:10]})" if v and e.status != "unbound" else "")


def _noise_text(d: dict) -> str:
    nz = d["noise"]
    return f"{nz['name']} ({'fraction of mass' if nz['relative'] else 'pixel units'})"


def _certified_cells(e: CertifiedEntry) -> list[str]:
    """Plain cell texts after the model: method, noise, sigma, n, alpha, examples, accuracies, status."""
    d, c = e.data, e.data["certification"]
    acc = d["claimed"]["certified_accuracy"]
    return ([d["method"], _noise_text(d), f"{d['noise']['sigma']:g}", str(c["n"]), f"{c['alpha']:g}",
             str(d["claimed"]["n_examples"])] + [_pct(acc.get(k)) for k in _CERTIFIED_KEYS]
            + [_certified_status(e)])


def _certified_markdown(ranked: list[tuple[CertifiedEntry, str]]) -> str:
    """Return the README's certified section: what it means, the table (or one line), how to add."""
    out = [f"\n## {_CERTIFIED_TITLE}\n\n{_md(_CERTIFIED_INTRO)}\n"]
    if not ranked:
        out.append("\nNo certified entries yet.\n")
    else:
        head = ["Rank", "Rank range", "Model", "Method", "Noise", "sigma", "n", "alpha", "Examples",
                *_CERTIFIED_KEYS, "Status"]
        out.append("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n")
        for e, rank, span in ranked:
            d = e.data
            model = f"[{_md(d['name'])}]({_md_url(d['source'])}) ({_md(d['id'])})"
            out.append("| " + " | ".join([rank, span, model, *map(_md, _certified_cells(e))]) + " |\n")
    out.append(_MD_CERTIFIED_HOWTO)
    return "".join(out)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 80rem; padding: 0 1rem; }
table.leaderboard, table.certified { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
table :is(th, td) { border-bottom: 1px solid #ddd; padding: 0.3rem 0.6rem; text-align: right; }
table :is(td.text, th.text) { text-align: left; }
table th button { font: inherit; font-weight: bold; background: none; border: none; padding: 0; }
table th button { cursor: pointer; }
table th[aria-sort="ascending"] button::after { content: " \\25B2"; }
table th[aria-sort="descending"] button::after { content: " \\25BC"; }
th.headline { background: #eef3fb; }
.status-verified { color: #11641f; font-weight: bold; }
.status-examples-verified { color: #11641f; }
.status-failed { color: #a40000; font-weight: bold; }
.status-claimed, .status-unbound { color: #666; font-style: italic; }
tr.failed td { color: #999; }
figure { margin: 1rem 0; }
figcaption, p.threat { color: #555; font-size: 0.9rem; }
""".strip()

_JS = """
(function () {
  "use strict";
  function cellValue(row, col, numeric) {
    var cell = row.cells[col];
    var raw = cell.hasAttribute("data-value") ? cell.getAttribute("data-value") : cell.textContent;
    if (!numeric) { return raw.toLowerCase(); }
    var v = parseFloat(raw);
    return isNaN(v) ? null : v;
  }
  function sortTable(table, col, th) {
    var numeric = th.getAttribute("data-type") === "number";
    var now = th.getAttribute("aria-sort");
    var dir = now === "descending" ? "ascending" : now === "ascending" ? "descending" :
      (numeric && th.getAttribute("data-first") !== "ascending" ? "descending" : "ascending");
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir);
    var sign = dir === "ascending" ? 1 : -1;
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellValue(a, col, numeric), y = cellValue(b, col, numeric);
      if (x !== y) {
        if (x === null) { return 1; }
        if (y === null) { return -1; }
        return x < y ? -sign : sign;
      }
      return Number(a.getAttribute("data-order")) - Number(b.getAttribute("data-order"));
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  var tables = document.querySelectorAll("table.leaderboard, table.certified");
  Array.prototype.forEach.call(tables, function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.querySelector("button").addEventListener("click", function () { sortTable(table, col, th); });
    });
  });
})();
""".strip()


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _svg(t: _Table) -> str:
    """Accuracy-vs-radius curves of one table, log radius axis, as inline SVG (escaped text only)."""
    w, h, left, right, top, bottom = 680, 300, 50, 210, 15, 40
    pts = [r for e in t.entries for r in e.data["claimed"]["curve"]["radius"] if r > 0]
    if not pts:
        return ""
    lo, hi = math.log10(min(pts)), math.log10(max(pts))
    hi = hi if hi > lo else lo + 1

    def px(r: float) -> float:
        return left + (math.log10(r) - lo) / (hi - lo) * (w - left - right)

    def py(a: float) -> float:
        return top + (1 - a) * (h - top - bottom)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
           'role="img" aria-label="robust accuracy against radius">',
           f'<rect x="{left}" y="{top}" width="{w - left - right}" height="{h - top - bottom}" '
           'fill="none" stroke="#999"/>']
    for a in (0.0, 0.25, 0.5, 0.75, 1.0):
        out.append(f'<line x1="{left}" x2="{w - right}" y1="{py(a):.1f}" y2="{py(a):.1f}" stroke="#eee"/>'
                   f'<text x="{left - 5}" y="{py(a) + 4:.1f}" font-size="11" text-anchor="end">'
                   f'{100 * a:.0f}%</text>')
    for r in t.radii:
        if float(r) > 0:
            x = px(float(r))
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{h - bottom}" stroke="#eee"/>'
                       f'<text x="{x:.1f}" y="{h - bottom + 15}" font-size="11" text-anchor="middle">'
                       f'{_e(r)}</text>')
    out.append(f'<text x="{(left + w - right) / 2:.0f}" y="{h - 5}" font-size="12" text-anchor="middle">'
               f'radius eps (log scale)</text>')
    for i, e in enumerate(t.entries):
        color = _PALETTE[i % len(_PALETTE)]
        c = e.data["claimed"]["curve"]
        line = " ".join(f"{px(r):.1f},{py(a):.1f}"
                        for r, a in zip(c["radius"], c["accuracy"], strict=True) if r > 0)
        dash = ' stroke-dasharray="4 3"' if e.status in ("claimed", "unbound", "failed") else ""
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{line}">'
                   f'<title>{_e(e.data["name"])}</title></polyline>')
        y = top + 14 * i + 8
        out.append(f'<line x1="{w - right + 10}" x2="{w - right + 30}" y1="{y}" y2="{y}" stroke="{color}" '
                   f'stroke-width="2"{dash}/><text x="{w - right + 35}" y="{y + 4}" font-size="11">'
                   f'{_e(e.data["name"][:30])}</text>')
    out.append("</svg>")
    return "".join(out)


def _html_head() -> list[str]:
    """Open the document: its head (CSP with the hashes of the inline style and script) and intro."""
    csp = (f"default-src 'none'; style-src {_csp_hash(_CSS)}; script-src {_csp_hash(_JS)}; img-src data:; "
           "base-uri 'none'; form-action 'none'")
    return ["<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n',
            '<meta name="referrer" content="no-referrer">\n',
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
            "<title>Wasserstein robustness leaderboard</title>\n",
            f"<style>{_CSS}</style>\n</head>\n<body>\n<h1>Wasserstein robustness leaderboard</h1>\n",
            "<p>Robust accuracy under one exactly defined Wasserstein threat model: every adversarial "
            "example counted was verified inside the ball. Ranked by robust accuracy at the headline radius, "
            "then clean accuracy; entries that failed verification are listed last, unranked. The rank range "
            "gives the places the evidence supports: entries are compared example by example on the test "
            "images both evaluated, at the ranking radius (exact McNemar test, Holm-corrected over all pairs "
            "of a table, 5 % family-wise), and an entry is placed behind another only where that test "
            "separates them. One table per "
            "suite version, the newest first: numbers from different suites are never ranked together. "
            "Click a column "
            "header to sort. Status shows whether the claimed numbers were re-checked by "
            "<code>wattack-leaderboard verify</code>.</p>\n"]


def _html_header(t: _Table) -> str:
    """Return the table's header row: one sort button per column, typed for the page's sorter."""
    return _header_cells(_empirical_columns(t), f"r{t.headline}")


#: The rank-range column (sorted by the best rank the tests allow).
_RANGE_COLUMN = ("Rank range", "number", "ascending", "range",
                 f"ranks not excluded by paired exact McNemar tests (Holm, {100 * ALPHA:g} % family-wise)")


def _empirical_columns(t: _Table) -> list[tuple[str, str, str, str, str]]:
    """Columns of an empirical table: ``(label, type, first sort direction, key, title)``."""
    cols = [("Rank", "number", "ascending", "rank", "rank"), _RANGE_COLUMN,
            ("Model", "text", "", "model", "model"),
            ("Architecture", "text", "", "architecture", "architecture"),
            ("Training", "text", "", "training", "training method"),
            ("Clean", "number", "", "clean", "clean accuracy")]
    cols += [(r, "number", "", f"r{r}", f"robust accuracy at radius {r}") for r in t.radii]
    cols += [("Suite", "text", "", "suite", "attack suite and version"),
             ("n", "number", "", "n", "examples"),
             ("Status", "text", "", "status", "verification status")]
    return cols


def _header_cells(cols: list[tuple[str, str, str, str, str]], highlight: str | None) -> str:
    """Return a header row: one sort button per column, typed for the page's sorter."""
    out = ["<thead><tr>"]
    for label, kind, first, key, title in cols:
        cls = ["text"] if kind == "text" else []
        if key == highlight:
            cls.append("headline")
        attrs = f' data-type="{kind}" data-key="{_e(key)}"' + (f' data-first="{first}"' if first else "")
        attrs += f' class="{" ".join(cls)}"' if cls else ""
        out.append(f'<th scope="col"{attrs}><button type="button" title="{_e(title)}">'
                   f'{_e(label)}</button></th>')
    out.append("</tr></thead>\n")
    return "".join(out)


def _row_head(e, order: int, rank: str, span: str, *, title: str = "", after_name: str = "") -> list[str]:
    """Return the cells every table row starts with: row tag, rank, rank range, linked name (escaped)."""
    d = e.data
    tr_class = ' class="failed"' if e.status == "failed" else ""
    note = f'<br><small>{_e(d["note"])}</small>' if d.get("note") else ""
    best = span.split("–")[0] if span != "–" else ""
    return [f'<tr data-id="{_e(d["id"])}" data-order="{order}"{tr_class}>',
            f'<td data-value="{order}">{rank}</td>',
            f'<td data-value="{best}">{_e(span)}</td>',
            f'<td class="text" data-value="{_e(d["name"])}"><a href="{_e(d["source"])}" '
            f'rel="noopener noreferrer nofollow"{title}>{_e(d["name"])}</a>{after_name}'
            f'<br><small>{_e(d["authors"])}</small>{note}</td>']


def _html_row(e: Entry, order: int, rank: str, span: str, radii: list[str]) -> str:
    """Return one entry's table row; ``data-value`` holds the sortable number, ``data-order`` the rank."""
    d, cl = e.data, e.data["claimed"]
    title = f' title="{_e(d.get("paper") or d["source"])}"'
    row = [*_row_head(e, order, rank, span, title=title),
           f'<td class="text">{_e(d["architecture"])}</td>',
           f'<td class="text">{_e(d["training"])}</td>',
           f'<td data-value="{cl["clean_accuracy"]!r}">{_pct(cl["clean_accuracy"])}</td>']
    for r in radii:
        a = cl["robust_accuracy"].get(r)
        row.append(f'<td data-value="{"" if a is None else repr(a)}">{_pct(a)}</td>')
    row += [f'<td class="text">{_e(d["suite"]["name"])} v{d["suite"]["version"]}</td>',
            f'<td data-value="{cl["n_examples"]}">{cl["n_examples"]}</td>',
            f'<td class="text status-{_e(e.status)}">{_e(_status(e))}</td></tr>\n']
    return "".join(row)


_CERTIFIED_COLUMNS = [("Rank", "number", "ascending", "rank", "rank"), _RANGE_COLUMN,
                      ("Model", "text", "", "model", "model"),
                      ("Method", "text", "", "method", "training of the base model"),
                      ("Noise", "text", "", "noise", "flow noise and its units"),
                      ("sigma", "number", "", "sigma", "noise standard deviation per flow coordinate"),
                      ("n", "number", "", "n", "noise draws per example"),
                      ("alpha", "number", "", "alpha", "failure probability per example"),
                      ("Examples", "number", "", "examples", "certified examples")]
_CERTIFIED_COLUMNS += [(k, "number", "", f"r{k}", f"certified accuracy at radius {k}")
                       for k in _CERTIFIED_KEYS]
_CERTIFIED_COLUMNS += [("Status", "text", "", "status", "verification status")]


def _certified_html_row(e: CertifiedEntry, order: int, rank: str, span: str) -> str:
    """Return one certified entry's row; numbers carry ``data-value`` for the sorter."""
    d, c, acc = e.data, e.data["certification"], e.data["claimed"]["certified_accuracy"]
    row = [*_row_head(e, order, rank, span, after_name=f' <small>({_e(d["id"])})</small>'),
           f'<td class="text">{_e(d["method"])}</td>', f'<td class="text">{_e(_noise_text(d))}</td>',
           f'<td data-value="{d["noise"]["sigma"]!r}">{d["noise"]["sigma"]:g}</td>',
           f'<td data-value="{c["n"]}">{c["n"]}</td>', f'<td data-value="{c["alpha"]!r}">{c["alpha"]:g}</td>',
           f'<td data-value="{d["claimed"]["n_examples"]}">{d["claimed"]["n_examples"]}</td>']
    for k in _CERTIFIED_KEYS:
        a = acc.get(k)
        row.append(f'<td data-value="{"" if a is None else repr(a)}">{_pct(a)}</td>')
    row.append(f'<td class="text status-{_e(e.status)}">{_e(_certified_status(e))}</td></tr>\n')
    return "".join(row)


def _certified_html(ranked: list[tuple[CertifiedEntry, str]]) -> str:
    """Return the certified section: heading, meaning, the table or one line saying there is none."""
    out = [f'<section id="certified">\n<h2>{_e(_CERTIFIED_TITLE)}</h2>\n',
           f'<p class="threat">{_e(_CERTIFIED_INTRO)}</p>\n']
    if not ranked:
        out.append('<p id="certified-empty">No certified entries yet.</p>\n')
    else:
        out += ['<table class="certified" id="table-certified">\n', _header_cells(_CERTIFIED_COLUMNS, "r0.1"),
                "<tbody>\n"]
        out += [_certified_html_row(e, order, rank, span)
                for order, (e, rank, span) in enumerate(ranked, start=1)]
        out.append("</tbody>\n</table>\n")
    out.append("</section>\n")
    return "".join(out)


def _table_id(t: _Table) -> str:
    """Return the table's HTML id: ``<dataset>-<threat id>-<suite>-v<version>``."""
    return f"{t.dataset}-{t.threat}-{t.suite[0]}-v{t.suite[1]}"


def _suite_text(t: _Table) -> str:
    return f"suite {t.suite[0]} v{t.suite[1]}"


def _html_section(t: _Table) -> str:
    """Return one table's section: heading, threat model, ranked rows and the accuracy curves."""
    sid = _e(_table_id(t))
    th = t.entries[0].data["threat"]
    out = [f'<section id="{sid}">\n<h2>{_e(t.dataset)} · {_e(t.threat)} · {_e(_suite_text(t))}</h2>\n',
           f'<p class="threat">Threat model: {_e(_threat_line(th))}. '
           f'Ranked at radius {_e(t.headline)}.</p>\n',
           f'<table class="leaderboard" id="table-{sid}">\n', _html_header(t), "<tbody>\n"]
    out += [_html_row(e, order, rank, span, t.radii)
            for order, (e, rank, span) in enumerate(_ranks(t), start=1)]
    out.append("</tbody>\n</table>\n")
    svg = _svg(t)
    if svg:
        out.append(f"<figure>{svg}<figcaption>Robust accuracy against radius (claimed numbers; dashed: "
                   "not verified).</figcaption></figure>\n")
    out.append("</section>\n")
    return "".join(out)


def _render_html(tables: list[_Table], certified: list[CertifiedEntry]) -> str:
    """Return index.html: self-contained (inline style, sorter script, SVG curves), nothing external."""
    out = _html_head()
    if not tables:
        out.append('<p id="empty">No entries yet.</p>\n')
    out += [_html_section(t) for t in tables]
    out.append(_certified_html(_certified_ranked(certified)))
    out.append(f"<script>{_JS}</script>\n</body>\n</html>\n")
    return "".join(out)


def render(root: Path) -> tuple[str, str]:
    """Render ``(README.md, index.html)`` text from the entries under ``root``; deterministic.

    Raises ``EntryError`` if any entry does not validate (nothing invalid is ever rendered). A
    verification record that does not bind to its entry does not stop rendering: the entry is shown
    as claimed, marked "verification does not match the entry" (``validate`` reports it).
    """
    bad = validate_all(root, binding=False) | validate_certified_all(root, binding=False)
    if bad:
        raise EntryError(f"{root}: cannot render", [f"{p}: {'; '.join(v)}" for p, v in sorted(bad.items())])
    tables = _tables([load_entry(p) for p in entry_paths(root)])
    certified = [load_certified(p) for p in certified_paths(root)]
    return _render_markdown(tables, certified), _render_html(tables, certified)


def write_rendered(root: Path) -> tuple[Path, Path]:
    """Write ``root/README.md`` and ``root/index.html`` atomically; returns their paths."""
    root = Path(root)
    md, page = render(root)
    atomic_write(root / "README.md", md.encode("utf-8"))
    atomic_write(root / "index.html", page.encode("utf-8"))
    return root / "README.md", root / "index.html"
