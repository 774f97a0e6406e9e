"""`hierarcaps view`: what SOURCE it accepts, that SITE is replaced only whole, and the page itself in headless Chromium.

The browser tests build a small real run (the filter stage with a fake NLI, as tests/test_review.py does), open its
site from file:// and check what a user relies on: every row is there with the shards' tiers, a reason filter and a
search narrow the rows, pages load their chunks, the images are the local copies, no request leaves the machine; and
on a review kit, marks survive a reload and download as a labels file that `hierarcaps review score` scores.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hierarcaps import review, shards, view
from hierarcaps.cli import app
from hierarcaps.config import load_profile
from hierarcaps.pipeline import filter_file
from hierarcaps.view import ViewError
from test_review import CONTRA, FakeNLI, hierarchy, write_csv

NEUTRAL = (0.2, 0.7, 0.1)
WORDS = ("red blue green small big old young happy tall wet dry dark light warm cold soft hard long short thin thick "
         "clean dirty quiet loud fast slow rich poor brave").split()
# A 1x1 PNG: the rows' "images" (Chrome decodes by content, whatever the .jpg name says).
PIXEL = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c63f8cf"
                      "c0f01f0005000201a5f5e3b80000000049454e44ae426082")
CHUNK_ROWS = 7  # small, so a page spans several chunks


def fate(k: int) -> str | None:
    return {1: "nli_negative_not_contradicting", 3: "nli_positive_not_entailed"}.get(k % 5)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """30 hierarchies through the filter stage (fake NLI): every 5th+1 row's negative does not contradict, every 5th+3
    row's positive tier 3 does not entail tier 2; the rest are accepted. run/images/ holds a local image for each."""
    base = tmp_path_factory.mktemp("view-run")
    rows, special = [hierarchy(word) for word in WORDS], {}
    for k, (pos, neg) in enumerate(rows):
        special.update({(p, n): CONTRA for p, n in zip(pos, neg)})
        if fate(k) == "nli_negative_not_contradicting":
            special.pop((pos[3], neg[3]))
        elif fate(k) == "nli_positive_not_entailed":
            special[(pos[2], pos[1])] = NEUTRAL
    run = base / "run"
    filter_file(write_csv(base / "in.csv", rows), run, load_profile("offline", {"input.rows_per_shard": 8}), nli=FakeNLI(special))
    (run / "images").mkdir()
    for k in range(len(rows)):  # write_csv names row k's image http://img/k.jpg
        (run / "images" / f"{k}.jpg").write_bytes(PIXEL)
    return run


def shard_rows(run: Path, kind: str) -> list[dict]:
    return [row for p in shards.output_shards(run / "filter", kind) for row in shards.read_table(p).to_pylist()]


def site_rows(site: Path) -> tuple[dict, list[dict]]:
    def call(text: str) -> str:
        return text[text.index("(") + 1: text.rindex(")")]

    meta = json.loads(call((site / "data" / "meta.js").read_text()))
    rows = []
    for k in range(meta["chunks"]):
        rows += json.loads(call((site / "data" / f"chunk-{k:05d}.js").read_text()).split(",", 1)[1])
    return meta, rows


# --- SOURCE and SITE, without a browser ---


def test_site_of_a_run_holds_every_filter_row_with_its_evidence(tmp_path, run_dir):
    info = view.build_site(run_dir, tmp_path / "site", chunk_rows=CHUNK_ROWS)
    meta, rows = site_rows(tmp_path / "site")
    accepted, rejected = shard_rows(run_dir, "part"), shard_rows(run_dir, "rejects")
    assert (meta["rows"], info["rows"], len(rows)) == (len(WORDS), len(WORDS), len(WORDS))
    assert [r["p"] for r in rows] == [r["positive"] for r in accepted] + [r["positive"] for r in rejected]
    assert meta["chunks"] == -(-len(WORDS) // CHUNK_ROWS) and meta["stage"] == "filter"
    assert meta["counts"] == {"accepted": len(accepted), "rejected": len(rejected), "images_local": len(WORDS), "images_remote": 0}
    reasons = meta["facets"]["reason"]
    assert [reasons["values"][c] or None for c in reasons["codes"]] == [r["r"] for r in rows]
    assert rows[0]["me"] == pytest.approx(0.9) and rows[0]["mc"] == pytest.approx(0.8)
    failing = next(r for r in rows if r["r"] == "nli_positive_not_entailed")
    assert (failing["x"]["side"], failing["x"]["tier"], failing["x"]["probs"]["neutral"]) == ("positive", 2, pytest.approx(0.7))
    # a reject's image and source come from the filter's upstream stage; the image is linked relative to the site
    assert failing["s"] == "external" and (tmp_path / "site" / failing["img"]).resolve().parent == (run_dir / "images").resolve()


def test_images_are_copied_when_asked_and_the_official_csv_folder_is_recognised(tmp_path):
    folder = tmp_path / "testset"
    (folder / "images").mkdir(parents=True)
    write_csv(folder / "hierarcaps_test.csv", [hierarchy("red"), hierarchy("blue"), (["too", "short"], None)])
    (folder / "images" / "0.jpg").write_bytes(PIXEL)
    info = view.build_site(folder, tmp_path / "site", copy_images=True)
    meta, rows = site_rows(tmp_path / "site")
    assert (meta["kind"], meta["counts"]["images_local"], meta["counts"]["images_remote"]) == ("csv", 1, 1)
    assert rows[0]["img"] == "images/0.jpg" and (tmp_path / "site" / "images" / "0.jpg").read_bytes() == PIXEL
    assert "img" not in rows[1] and rows[1]["u"] == "http://img/1.jpg"
    assert rows[2]["r"] == "not_4_tiers" and info["counts"]["rejected"] == 1  # a bad CSV row is shown, not dropped


def test_a_release_folder_shows_its_shards(tmp_path, run_dir):
    from hierarcaps import release

    published = release.publish(run_dir, tmp_path / "release", include_rejects=True)
    meta, rows = site_rows(Path(view.build_site(published, tmp_path / "site")["site"]))
    accepted, rejected = shard_rows(run_dir, "part"), shard_rows(run_dir, "rejects")
    assert (meta["kind"], meta["stage"], meta["rows"]) == ("release", "filter", len(WORDS))
    assert [r["id"] for r in rows] == [r["id"] for r in accepted + rejected]
    assert [r["r"] for r in rows[len(accepted):]] == [r["reason"] for r in rejected]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("make, expected", [
    (lambda p: p / "missing", "not found"),
    (lambda p: write(p / "notes.txt", "x"), "not a folder or a .csv"),
    (lambda p: write(p / "stuff" / "a.txt", "x").parent, "it holds: a.txt"),
    (lambda p: write(p / "bad.csv", "caption\nhello\n"), "'positive'"),
])
def test_an_unrecognised_source_says_what_was_expected(tmp_path, make, expected):
    with pytest.raises(ViewError, match=expected) as err:
        view.build_site(make(tmp_path), tmp_path / "site")
    assert "expected a run folder" in str(err.value) and not (tmp_path / "site").exists()


def test_a_stage_that_has_not_run_is_named_with_the_finished_ones(tmp_path, run_dir):
    with pytest.raises(ViewError, match=r"stage 'generate' has not finished.*external, filter"):
        view.build_site(run_dir, tmp_path / "site", stage="generate")
    assert site_rows(Path(view.build_site(run_dir, tmp_path / "ext", stage="external")["site"]))[0]["stage"] == "external"


def test_site_is_replaced_only_whole(tmp_path, run_dir, monkeypatch):
    site = tmp_path / "site"
    view.build_site(run_dir, site)
    before = {p.relative_to(site): p.read_bytes() for p in site.rglob("*") if p.is_file()}

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(view, "_meta", broken)  # fails after the chunks are written
    with pytest.raises(RuntimeError, match="disk full"):
        view.build_site(run_dir, site, chunk_rows=3)
    assert {p.relative_to(site): p.read_bytes() for p in site.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # no temp folder left beside it
    monkeypatch.undo()
    view.build_site(run_dir, site, chunk_rows=3)  # an earlier site is replaced
    assert site_rows(site)[0]["chunk_rows"] == 3 and sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def test_a_folder_that_is_not_a_site_is_never_replaced(tmp_path, run_dir):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep")
    with pytest.raises(ViewError, match="not a site written by `hierarcaps view`"):
        view.build_site(run_dir, mine)
    with pytest.raises(ViewError, match="would replace the SOURCE"):
        view.build_site(run_dir, run_dir.parent)
    assert (mine / "thesis.tex").read_text() == "keep" and (run_dir / "filter").is_dir()


def test_cli_view_and_its_error(tmp_path, run_dir):
    runner = CliRunner()
    result = runner.invoke(app, ["view", str(run_dir), "--out", str(tmp_path / "site")])
    assert result.exit_code == 0, result.output
    assert "30 rows (18 accepted, 12 rejected" in result.output and "file://" in result.output
    result = runner.invoke(app, ["view", str(tmp_path / "nope"), "--out", str(tmp_path / "other")])
    assert result.exit_code == 1 and "expected a run folder" in result.output


def test_a_review_site_is_blind(tmp_path, run_dir):
    kit = tmp_path / "kit"
    key = review.sample(run_dir, kit, n=3, seed=2)
    meta, rows = site_rows(Path(view.build_site(kit, tmp_path / "site")["site"]))
    sheet = json.loads((kit / review.SHEET).read_text())
    assert [r["id"] for r in rows] == [item["id"] for item in sheet] and meta["review"]["items"] == 3
    text = "".join(p.read_text() for p in (tmp_path / "site").rglob("*.js*"))
    for entry in key["rows"].values():  # nothing of the key: not the row's id in the run, nor its source
        assert entry["row_id"] not in text
    assert str(run_dir) not in text and "external" not in text


# --- in a real browser ---


def chromium() -> tuple[str, str]:
    """(browser, driver) paths, or skip saying how to get them."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed: pip install -e '.[test]'")
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("no Chromium found (need chromium and chromedriver on PATH): apt-get install chromium chromium-driver "
                    "(scripts/setup.sh does it when run as root)")
    return browser, driver


def test_without_chromium_the_browser_tests_skip_saying_how_to_get_it(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium chromium-driver"):
        chromium()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = chromium()
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    chrome.downloads = downloads
    yield chrome
    chrome.quit()


def open_site(chrome, site: Path) -> None:
    chrome.get((site / "index.html").as_uri())
    wait(chrome, lambda: chrome.execute_script("return document.body.dataset.ready") == "1")


def wait(chrome, condition, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out; page says: {chrome.find_element('id', 'status-line').text!r}")


def shown(chrome) -> list:
    return chrome.find_elements("css selector", "article.row")


def matches(chrome) -> int:
    return int(chrome.execute_script("return document.body.dataset.matches"))


def choose(chrome, select_id: str, label_start: str) -> None:
    from selenium.webdriver.support.ui import Select

    select = Select(chrome.find_element("id", select_id))
    select.select_by_visible_text(next(o.text for o in select.options if o.text.startswith(label_start)))


def requested_urls(chrome) -> set[str]:
    urls = set()
    for entry in chrome.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.add(message["params"]["request"]["url"])
    return urls


def test_the_page_of_a_run_in_chromium(tmp_path, run_dir, browser):
    site = tmp_path / "site"
    view.build_site(run_dir, site, chunk_rows=CHUNK_ROWS, remote_images=False)
    accepted, rejected = shard_rows(run_dir, "part"), shard_rows(run_dir, "rejects")
    browser.get_log("performance")  # start the network log here
    open_site(browser, site)
    assert matches(browser) == len(accepted) + len(rejected) == len(WORDS)
    rows = shown(browser)
    assert len(rows) == len(WORDS)  # one page of 50: every chunk loaded
    first = rows[0]
    tiers = [cell.text for cell in first.find_elements("css selector", "td.positive")]
    negatives = [cell.text for cell in first.find_elements("css selector", "td.negative")]
    assert (tiers, negatives) == (accepted[0]["positive"], accepted[0]["negative"])
    assert "weakest entailment 0.900" in first.text
    image = first.find_element("css selector", ".image img")  # the local copy (the others load lazily, when scrolled to)
    wait(browser, lambda: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth === 1", image))
    assert all(img.get_attribute("src").startswith("file://") for img in browser.find_elements("css selector", ".image img"))

    choose(browser, "f-reason", "nli_positive_not_entailed")
    wait(browser, lambda: matches(browser) == sum(r["reason"] == "nli_positive_not_entailed" for r in rejected))
    rows = shown(browser)
    assert rows and all("nli_positive_not_entailed" in row.find_element("css selector", ".badge").text for row in rows)
    failing = rows[0].find_element("css selector", "td.failing")  # the failing pair's cell, with its probabilities
    assert (failing.get_attribute("class"), failing.get_attribute("data-tier")) == ("positive failing", "2")
    assert "neutral 0.700" in rows[0].find_element("css selector", ".nli").text

    choose(browser, "f-reason", "all reasons")
    browser.find_element("id", "f-search").send_keys("brave")
    wait(browser, lambda: matches(browser) == 1)
    assert "brave brown dog on the grass" in shown(browser)[0].text
    browser.find_element("id", "f-search").clear()
    browser.find_element("id", "f-search").send_keys(" ")  # clear() fires no input event
    choose(browser, "page-size", "25")
    wait(browser, lambda: len(shown(browser)) == 25)
    browser.find_element("id", "next").click()
    wait(browser, lambda: len(shown(browser)) == len(WORDS) - 25)
    assert shown(browser)[0].get_attribute("data-index") == "25"

    urls = requested_urls(browser)
    assert urls and all(u.split(":", 1)[0] in ("file", "data", "blob") for u in urls), sorted(urls)


def test_review_marks_persist_and_download_as_labels_that_score(tmp_path, run_dir, browser):
    kit = tmp_path / "kit"
    review.sample(run_dir, kit, n=3, seed=1)
    site = tmp_path / "site"
    view.build_site(kit, site)
    open_site(browser, site)
    assert len(shown(browser)) == 3 and browser.find_element("id", "review-bar").is_displayed()
    first = shown(browser)[0]
    first.find_element("css selector", 'td.negative[data-tier="2"] button.mark[data-value="0"]').click()  # tier 2 invalid
    for k in range(3):
        shown(browser)[k].find_element("css selector", "button.rest").click()  # everything else valid
    assert "3 of 3 items fully marked" in browser.find_element("id", "review-progress").text

    browser.refresh()  # the marks are in localStorage
    open_site(browser, site)
    pressed = shown(browser)[0].find_element("css selector", 'td.negative[data-tier="2"] button.mark[data-value="0"]')
    assert pressed.get_attribute("aria-pressed") == "true"

    browser.get_log("performance")
    browser.find_element("id", "download").click()
    labels = browser.downloads / f"labels-{kit.name}.json"
    wait(browser, labels.exists)
    wait(browser, lambda: json.loads(labels.read_text() or "null") is not None)
    result = review.score(kit, [labels])
    shares = result["sources"]["run"]["mean"]
    assert shares["positive"] == 1.0 and shares["negative"] == [1.0, pytest.approx(2 / 3), 1.0, 1.0]
    assert shares["whole"] == pytest.approx(2 / 3)
    assert all(u.split(":", 1)[0] in ("file", "data", "blob") for u in requested_urls(browser))
