"""`repo inspect-noise --html` (the page, opened in a real headless browser) and `--review` (Label Studio tasks).

The run is the synthetic one of test_inspect_noise.py, with one flagged response made long and full of markup.
"""

import html
import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image
from test_inspect_noise import ANNOTATOR, FLIPPED, input_rows, write_cache, write_input, write_run

from re_po.data import noise_report, review
from re_po.stages.inspect_noise import InspectConfig, run

BROWSERS = ("chromium-headless-shell", "chromium", "chrome-headless-shell", "google-chrome")
MARKUP = "<script>document.title='owned'</script> & </td></tr> "
LONG_ROW = 34  # flagged, lowest w
THRESHOLD = 0.9  # flags 9 pairs of "sloppy" and 2 of "careful"


def browser() -> str:
    """The headless browser; CI must have one (`make test` installs Debian's chromium-headless-shell)."""
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"no headless browser on PATH (tried {', '.join(BROWSERS)}); `make test` installs one")
        pytest.skip(f"no headless browser on PATH (tried {', '.join(BROWSERS)})")
    return found


def open_in_browser(page: Path, *flags: str) -> str:
    """The DOM after the page's scripts ran, as the browser serializes it (or its output for --screenshot)."""
    done = subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--virtual-time-budget=5000", *flags, page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture
def inspected(tmp_path):
    """(summary, html path, review path) of a run whose lowest-w pair has a long chosen text full of markup."""
    rows = input_rows()
    rows[LONG_ROW]["chosen"] = MARKUP + "word " * 200 + "END"
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scores = write_cache(tmp_path / "scores", source)
    out = run(InspectConfig(run=write_run(tmp_path / "run", scores), out_dir=tmp_path / "inspect", threshold=THRESHOLD,
                            html=tmp_path / "report.html", review=tmp_path / "review" / "tasks.json"))
    return json.loads((out / "summary.json").read_text()), tmp_path / "report.html", tmp_path / "review" / "tasks.json"


class Tables(HTMLParser):
    """The cells of every table of a page, by table id, and the page's elements by tag."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.tags: dict[str, int] = {}
        self.table = self.row = self.cell = None

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag == "table":
            self.table = self.tables.setdefault(dict(attrs).get("id"), [])
        elif tag == "tr" and self.table is not None:
            self.row = []
            self.table.append(self.row)
        elif tag in ("td", "th") and self.row is not None:
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.row.append("".join(self.cell).strip())
            self.cell = None
        elif tag == "table":
            self.table = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def flagged_by_w(folder: Path) -> list[str]:
    """The row_ids of the run's flagged pairs (w < THRESHOLD in its last epoch), lowest w first, read independently."""
    last = pl.read_parquet(folder / "run" / "posteriors" / "epoch-0002.parquet").filter(pl.col("w") < THRESHOLD)
    return last.sort("w", "row_id")["row_id"].cast(str).to_list()


def parse(text: str) -> Tables:
    tables = Tables()
    tables.feed(text)
    return tables


# ---- the page as written ------------------------------------------------------------------------------------

def test_page_holds_the_annotators_the_flagged_pairs_and_the_plots(inspected):
    summary, page, _ = inspected
    text = page.read_text()
    tables = parse(text)
    head, *rows = tables.tables["pairs"]
    assert head[:7] == ["rank", "w", "z", "row_id", "pair_id", "annotator", "is_flipped"]
    assert [r[3] for r in rows] == flagged_by_w(page.parent)
    assert [r[6] == "True" for r in rows] == [int(r[3]) in FLIPPED for r in rows]
    assert [r[0] for r in tables.tables["annotators"][1:]] == [a["annotator"] for a in summary["annotators"]]
    assert summary["outputs"]["html"] == str(page)
    # the plots are inline (no file beside the page, no network), and each is a PNG that opens
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    assert len(images) == 5 and "http://" not in text and "https://" not in text
    # the markup in a text is shown as text: the page's own script and no other
    assert tables.tags["script"] == 1 and MARKUP.strip() in "".join(sum(rows, []))


def test_long_texts_are_collapsed_and_short_ones_are_not(inspected):
    _, page, _ = inspected
    tables = parse(page.read_text())
    first = tables.tables["pairs"][1]  # LONG_ROW: the lowest w
    assert int(first[3]) == LONG_ROW and first[8].count("END") == 1  # the whole text is there
    assert page.read_text().count("<details>") == 1  # and only the long one opens on a click


def test_the_page_shows_at_most_max_pairs(inspected, tmp_path, monkeypatch):
    summary, page, _ = inspected
    monkeypatch.setattr(noise_report, "MAX_PAIRS", 3)
    run(InspectConfig(run=tmp_path / "run", out_dir=tmp_path / "again", threshold=THRESHOLD,
                      html=tmp_path / "capped.html"))
    text = (tmp_path / "capped.html").read_text()
    assert len(parse(text).tables["pairs"]) == 1 + 3
    assert f"The 3 of lowest w are shown, of {summary['flagged']} flagged" in text


def test_nothing_flagged_still_makes_a_page(tmp_path):
    source = write_input(tmp_path, ".jsonl")
    run(InspectConfig(run=write_run(tmp_path / "run", write_cache(tmp_path / "scores", source)),
                      out_dir=tmp_path / "inspect", threshold=1e-9, html=tmp_path / "page.html"))
    text = (tmp_path / "page.html").read_text()
    assert "No pair is flagged." in text and "pairs" not in parse(text).tables


# ---- the page in a browser ----------------------------------------------------------------------------------

PROBE = """<script>
const cells = column => [...document.querySelectorAll('#pairs tbody tr')].filter(r => !r.hidden)
  .map(r => r.cells[column].textContent);
const head = name => [...document.querySelectorAll('#pairs th')].find(h => h.textContent === name);
const seen = {};
seen.initial = cells(3);
head('w').click(); seen.w_up = cells(3); seen.w_up_sort = head('w').getAttribute('aria-sort');
head('w').click(); seen.w_down = cells(3);
head('row_id').click(); seen.row_id_up = cells(3);
head('annotator').click(); seen.by_annotator = cells(5);
const query = document.getElementById('filter');
query.value = 'number 2'; query.dispatchEvent(new Event('input')); seen.filtered = cells(3);
seen.shown = document.getElementById('shown').textContent;
query.value = ''; query.dispatchEvent(new Event('input'));
const who = document.getElementById('who'); who.value = 'careful'; who.dispatchEvent(new Event('change'));
seen.careful = cells(3).length;
const details = document.querySelector('#pairs details');
seen.collapsed = !details.open && details.getBoundingClientRect().height < 200;
seen.title = document.title;
const out = document.createElement('pre'); out.id = 'probed'; out.textContent = JSON.stringify(seen);
document.body.append(out);
</script></body>"""


def test_in_a_browser_the_tables_sort_and_filter(inspected, tmp_path):
    summary, page, _ = inspected
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE))
    dom = open_in_browser(probed, "--dump-dom")
    seen = json.loads(html.unescape(re.search(r'<pre id="probed">(.*?)</pre>', dom, re.S).group(1)))
    by_w = flagged_by_w(tmp_path)
    assert seen["initial"] == by_w and seen["w_up"] == by_w and seen["w_up_sort"] == "ascending"
    assert seen["w_down"] == by_w[::-1]
    assert seen["row_id_up"] == sorted(by_w, key=int)  # numerically: 3 before 20
    assert seen["by_annotator"] == sorted(seen["by_annotator"])
    assert seen["filtered"] == [r for r in seen["row_id_up"] if r.startswith("2")]  # "number 2x" in the prompt
    assert seen["shown"] == f"{len(seen['filtered'])} shown"
    assert seen["careful"] == sum(ANNOTATOR[int(r)] == "careful" for r in by_w) == 2
    assert seen["collapsed"] and seen["title"] == "re-po: which labels to trust"  # the markup did not run
    assert len(by_w) == summary["flagged"]


def test_in_a_browser_the_page_renders(inspected, tmp_path):
    _, page, _ = inspected
    shot = tmp_path / "shot.png"
    open_in_browser(page, f"--screenshot={shot}", "--window-size=1200,900")
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (900, 1200) and pixels.std() > 10  # text, tables and plots, not a blank page


# ---- Label Studio tasks -------------------------------------------------------------------------------------

def test_review_tasks_show_each_flagged_pair_blind(inspected):
    summary, _, tasks_path = inspected
    tasks = json.loads(tasks_path.read_text())
    rows = input_rows()
    rows[LONG_ROW]["chosen"] = MARKUP + "word " * 200 + "END"
    assert [str(t["data"]["row_id"]) for t in tasks] == flagged_by_w(tasks_path.parent.parent)
    for task in tasks:
        data, row = task["data"], rows[task["data"]["row_id"]]
        better, worse = ("answer_a", "answer_b") if data["recorded_better"] == "answer_a" else ("answer_b", "answer_a")
        assert (data["prompt"], data[better], data[worse]) == (row["prompt"], row["chosen"], row["rejected"])
        assert data["annotator"] == row["annotator"] and 0 <= data["w"] < THRESHOLD
    assert {t["data"]["recorded_better"] for t in tasks} == {"answer_a", "answer_b"}  # chosen is not always A
    assert summary["outputs"]["review"] == [str(tasks_path), str(tasks_path.with_suffix(".xml"))]


def test_the_labeling_config_names_fields_every_task_has(inspected):
    _, _, tasks_path = inspected
    config = ET.fromstring(tasks_path.with_suffix(".xml").read_text())
    assert config.tag == "View"
    texts = {t.get("name"): t.get("value") for t in config.iter("Text")}
    pairwise = next(config.iter("Pairwise"))
    assert pairwise.get("toName").split(",") == ["answer_a", "answer_b"] and set(texts) >= {"answer_a", "answer_b"}
    for task in json.loads(tasks_path.read_text()):
        assert all(value.removeprefix("$") in task["data"] for value in texts.values())


def test_review_of_conversations_writes_each_message():
    flagged = pl.DataFrame({"row_id": [7], "pair_id": ["p"], "annotator": ["a"], "w": [0.1], "z": [-2.0]})
    prompt = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    [task] = review.tasks(flagged, [(prompt, [{"role": "assistant", "content": "yes"}], "no")])
    assert task["data"]["prompt"] == "system: be brief\n\nuser: hi"
    assert {task["data"]["answer_a"], task["data"]["answer_b"]} == {"assistant: yes", "no"}


def test_html_and_review_names_are_checked(tmp_path):
    with pytest.raises(ValueError, match="--html names an .html file"):
        InspectConfig(run=tmp_path, out_dir=tmp_path / "i", html=tmp_path / "page.txt")
    with pytest.raises(ValueError, match="--review names a .json file"):
        InspectConfig(run=tmp_path, out_dir=tmp_path / "i", review=tmp_path / "tasks.csv")
