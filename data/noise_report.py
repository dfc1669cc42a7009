"""The HTML page of `repo inspect-noise --html FILE`: one self-contained file, opened without a server.

Everything is inline (styles, script, the plots as PNG data URLs): the page is read where no network is.
The flagged pairs are a table sortable by any column (click its header) and filtered by text and
annotator; long texts are collapsed to their first line. The tables are rendered here, so the page also
reads with scripts off; the script only sorts and filters rows that are already there.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from string import Template

import polars as pl

from re_po.data.pairs import PairValue

COLLAPSE_CHARS = 240  # a text longer than this shows its start, and opens on a click
MAX_PAIRS = 2000  # the page's table, lowest w first; --dump writes every flagged pair


def page(headline: str, truth_line: str | None, annotators: pl.DataFrame, plots: list[Path],
         flagged: pl.DataFrame, texts: list[tuple[PairValue, PairValue, PairValue]], truth_col: str | None) -> str:
    """The page. flagged: the flagged pairs, lowest w first; texts: (prompt, chosen, rejected) of the first
    MAX_PAIRS of them, the ones shown."""
    shown = flagged.head(MAX_PAIRS)
    capped = (f"<p class='note'>The {MAX_PAIRS} of lowest w are shown, of {flagged.height} flagged; "
              "<code>--dump FILE</code> writes every one.</p>" if flagged.height > MAX_PAIRS else "")
    names = sorted(set(shown["annotator"].to_list()))
    return PAGE.substitute(
        headline=html.escape(headline),
        truth=f"<p class='truth'>{html.escape(truth_line)}</p>" if truth_line else "",
        annotators=annotator_table(annotators),
        plots="".join(plot_figure(p) for p in plots) or "<p class='note'>No plots.</p>",
        flagged_count=flagged.height,
        capped=capped,
        annotator_options="".join(f"<option>{html.escape(n)}</option>" for n in names),
        pairs=pair_table(shown, texts, truth_col) if shown.height else
        "<p class='note'>No pair is flagged.</p>",
    )


def annotator_table(annotators: pl.DataFrame) -> str:
    head = "".join(header(name, annotators.schema[name].is_numeric()) for name in annotators.columns)
    rows = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in annotators.iter_rows())
    return f"<table class='sortable' id='annotators'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def pair_table(flagged: pl.DataFrame, texts: list, truth_col: str | None) -> str:
    numbers = ["w", "z", "row_id"]
    labels = ["pair_id", "annotator"] + ([truth_col] if truth_col else [])
    head = (header("rank", True) + "".join(header(n, True) for n in numbers) + "".join(header(n, False) for n in labels)
            + "".join(header(n, False, "text") for n in ("prompt", "chosen", "rejected")))
    rows = []
    for rank, (row, values) in enumerate(zip(flagged.iter_rows(named=True), texts), start=1):
        cells = cell(rank) + "".join(cell(row[n]) for n in numbers) + "".join(cell(row[n]) for n in labels)
        cells += "".join(f"<td class='text'>{text_block(v)}</td>" for v in values)
        rows.append(f"<tr data-group='{html.escape(str(row['annotator']))}'>{cells}</tr>")
    return f"<table class='sortable' id='pairs'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def header(name: str, numeric: bool, css: str = "") -> str:
    return (f"<th data-type='{'num' if numeric else 'text'}'{f' class={css!r}' if css else ''} tabindex='0' "
            f"title='sort'>{html.escape(name)}</th>")


def cell(value) -> str:
    """A table cell; numbers keep their full value in data-v, the sort key."""
    if value is None:
        return "<td data-v=''>–</td>"
    if isinstance(value, bool):
        return f"<td>{value}</td>"
    if isinstance(value, float):
        return f"<td data-v='{value!r}'>{value:.3f}</td>"
    if isinstance(value, int):
        return f"<td data-v='{value}'>{value}</td>"
    return f"<td>{html.escape(str(value))}</td>"


def text_block(value: PairValue) -> str:
    """A text, or a message list as one block per message; collapsed when long."""
    if isinstance(value, list):
        body = "".join(f"<div class='msg'><b>{html.escape(str(m.get('role')))}</b> "
                       f"{html.escape(str(m.get('content')))}</div>" for m in value)
        plain = str(value[-1].get("content")) if value else ""
        long = len(value) > 1 or len(plain) > COLLAPSE_CHARS
    else:
        body, plain, long = html.escape(value), value, len(value) > COLLAPSE_CHARS
    if not long:
        return f"<div class='full'>{body}</div>"
    start = html.escape(plain[:COLLAPSE_CHARS].rstrip()) + " …"
    return f"<details><summary>{start}</summary><div class='full'>{body}</div></details>"


def plot_figure(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f"<figure><img alt='{html.escape(path.stem)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(path.stem)}</figcaption></figure>")


SCRIPT = """(() => {  // nothing leaks into the page's globals
for (const table of document.querySelectorAll('table.sortable')) {
  const heads = [...table.tHead.rows[0].cells];
  heads.forEach((th, column) => {
    const sort = () => {
      const ascending = th.getAttribute('aria-sort') !== 'ascending';
      heads.forEach(h => h.removeAttribute('aria-sort'));
      th.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
      const numeric = th.dataset.type === 'num';
      const key = row => {
        const c = row.cells[column], v = c.dataset.v ?? c.textContent;
        if (!numeric) return v.toLowerCase();
        const x = parseFloat(v);
        return Number.isNaN(x) ? -Infinity : x;
      };
      const rows = [...table.tBodies[0].rows];
      rows.sort((a, b) => { const x = key(a), y = key(b); return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1); });
      table.tBodies[0].append(...rows);
    };
    th.addEventListener('click', sort);
    th.addEventListener('keydown', e => { if (e.key === 'Enter') sort(); });
  });
}
const pairs = document.getElementById('pairs');
const query = document.getElementById('filter'), who = document.getElementById('who');
const shown = document.getElementById('shown');
function filterRows() {
  if (!pairs) return;
  const q = query.value.toLowerCase();
  let n = 0;
  for (const row of pairs.tBodies[0].rows) {
    const keep = (!who.value || row.dataset.group === who.value) && (!q || row.textContent.toLowerCase().includes(q));
    row.hidden = !keep;
    n += keep;
  }
  shown.textContent = n + ' shown';
}
query.addEventListener('input', filterRows);
who.addEventListener('change', filterRows);
filterRows();
})();
"""

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em 2em; color: #1d1d1f; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.where, .truth { margin: 0.3em 0; } .note { color: #666; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.55em; vertical-align: top; text-align: left; }
th { background: #f3f4f6; cursor: pointer; user-select: none; white-space: nowrap; position: sticky; top: 0; }
th[aria-sort=ascending]::after { content: ' ▲'; } th[aria-sort=descending]::after { content: ' ▼'; }
td[data-v] { text-align: right; font-variant-numeric: tabular-nums; }
#pairs td.text, #pairs th.text { width: 28%; }
#pairs { width: 100%; table-layout: auto; }
.full { white-space: pre-wrap; overflow-wrap: anywhere; }
.msg { margin-bottom: 0.3em; } .msg b { color: #555; font-weight: 600; }
summary { cursor: pointer; color: #333; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figure img { max-width: 420px; border: 1px solid #eee; }
figcaption { color: #666; font-size: 0.9em; }
.controls { margin: 0.5em 0; display: flex; gap: 0.8em; align-items: center; }
.controls input { width: 22em; padding: 0.25em; }
"""

PAGE = Template("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>re-po: which labels to trust</title><style>""" + STYLE.replace("$", "$$") + """</style></head>
<body>
<h1>Which labels to trust</h1>
<p class="where">$headline</p>
$truth
<h2>Annotators</h2>
$annotators
<h2>Flagged pairs ($flagged_count)</h2>
$capped
<div class="controls"><input id="filter" type="search" placeholder="filter: any text in the row">
<select id="who"><option value="">every annotator</option>$annotator_options</select><span id="shown"></span></div>
$pairs
<h2>Plots</h2>
<div class="plots">$plots</div>
<script>""" + SCRIPT.replace("$", "$$") + """</script>
</body></html>
""")
