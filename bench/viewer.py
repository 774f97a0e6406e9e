"""The viewer's targets (issue 19): first rows visible < 1 s after navigation for a 10,000-row run, in headless Chromium,
and a site whose size grows linearly with the rows.

    python bench/viewer.py [--rows 1000 10000 100000] [--repeats 3] [--screenshot docs/viewer.png --screenshot-source DIR]

For each size, synthetic filter-stage rows (4+4 tiers of realistic length; 30% rejected with an NLI detail, as the
filter writes them; an image URL each) are written by the same `view.write_site` the CLI uses, then opened from
file:// in a fresh page: "first rows" is the viewer's `hc-first-rows` performance mark (set when the first page is in
the DOM), in ms since navigation start; "reason filter" and "search" are the times from the control's change to the
new rows in the DOM (a search loads every chunk once). Sizes are of the whole site folder. `--screenshot` saves the
page of `--screenshot-source` (any SOURCE `hierarcaps view` takes) at 1280x900; docs/viewer.png is

    hierarcaps filter -i <the first 40 rows of hierarcaps_test.csv> --out /tmp/shot/run
    python bench/viewer.py --rows 100 --screenshot docs/viewer.png --screenshot-source /tmp/shot/run \
        --screenshot-images ../shared/data/hierarcaps_test/images --screenshot-status rejected
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from hierarcaps import view
from hierarcaps.view_sources import Source

REASONS = ("nli_negative_not_contradicting", "nli_positive_not_entailed", "nli_negative_not_entailing_previous",
           "positive_repeated_tier", "non_words")
NOUNS = "dog cat horse bird man woman child bus train plate pizza table kitchen street beach field".split()
PLACES = "on the grass|in a park|on the beach|in the kitchen|on a street|near the water|in a field".split("|")


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        a, b = rng.sample(NOUNS, 2)
        place, other = rng.sample(PLACES, 2)
        positive = ["animal", a, f"{a} {place}", f"a brown {a} standing {place} next to a small {b} on a sunny day"]
        negative = ["plant", b, f"{a} {other}", f"a brown {a} sitting {other} next to a small {b} on a rainy day"]
        row = {"id": f"{k:016x}", "p": positive, "n": negative, "u": f"http://images.example/val/{k:012d}.jpg",
               "r": None, "st": "filter", "s": rng.choice(("generate", "seed", "augment"))}
        if rng.random() < 0.3:
            row["r"] = rng.choice(REASONS)
            row["x"] = {"rule": "nli_negative_contradicts", "side": "negative", "tier": 3, "premise": positive[2],
                        "hypothesis": negative[2], "probs": {"entailment": 0.21, "neutral": 0.64, "contradiction": 0.15},
                        "threshold": 0.5, "needs": "contradiction", "also_failed": []}
        else:
            row.update(me=0.91, mc=0.77)
        rows.append(row)
    return rows


def make_browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        sys.exit("no Chromium found: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(driver))


def open_page(chrome, site: Path) -> float:
    chrome.get("about:blank")
    chrome.get((site / "index.html").as_uri())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        marks = chrome.execute_script("return performance.getEntriesByName('hc-first-rows').map(e => e.startTime)")
        if marks:
            return marks[0]
        time.sleep(0.02)
    raise RuntimeError(f"{site}: no rows shown within 60 s")


# Change a control, resolve with the ms until #rows is replaced (the viewer renders a page in one innerHTML).
CHANGE = """
const [id, value, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
const el = document.getElementById(id), t0 = performance.now();
new MutationObserver((_, obs) => { obs.disconnect(); done(performance.now() - t0); })
  .observe(document.getElementById('rows'), {childList: true});
el.value = value; el.dispatchEvent(new Event(id === 'f-search' ? 'input' : 'change'));
"""


def measure(chrome, site: Path, repeats: int) -> dict:
    first = [open_page(chrome, site) for _ in range(repeats)]
    chrome.set_script_timeout(120)
    reason = chrome.execute_async_script(CHANGE, "f-reason", "2")  # the 2nd most frequent reason: rows spread out
    search = chrome.execute_async_script(CHANGE, "f-search", "kitchen next to a small horse")
    search -= 200  # the search box waits 200 ms after the last key before filtering
    return {"first_ms": statistics.median(first), "first_all": first, "reason_ms": reason, "search_ms": search}


def site_bytes(site: Path) -> int:
    return sum(p.stat().st_size for p in site.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--screenshot-source", type=Path)
    parser.add_argument("--screenshot-images", type=Path, nargs="*", default=[], help="more image folders (view --images)")
    parser.add_argument("--screenshot-status", default="", help="'rejected': show the rejected rows first")
    args = parser.parse_args()
    chrome = make_browser()
    work = Path(tempfile.mkdtemp(prefix="viewer-bench-"))
    try:
        print(f"| rows | site MB | bytes/row | write s | first rows ms (median of {args.repeats}) | reason filter ms | search ms |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for n in args.rows:
            site = work / f"site-{n}"
            start = time.perf_counter()
            view.write_site(Source("run", work / f"synthetic-{n}", synthetic_rows(n), stage="filter"), site, remote_images=False)
            written = time.perf_counter() - start
            size = site_bytes(site)
            m = measure(chrome, site, args.repeats)
            print(f"| {n:,} | {size / 1e6:.2f} | {size / n:.0f} | {written:.1f} | {m['first_ms']:.0f} "
                  f"({', '.join(f'{v:.0f}' for v in m['first_all'])}) | {m['reason_ms']:.0f} | {m['search_ms']:.0f} |", flush=True)
        if args.screenshot:
            site = work / "shot"
            view.build_site(args.screenshot_source, site, images=args.screenshot_images, remote_images=False)
            open_page(chrome, site)
            if args.screenshot_status:
                chrome.execute_async_script(CHANGE, "f-status", args.screenshot_status)
            time.sleep(1.0)  # let the visible images decode
            chrome.save_screenshot(str(args.screenshot))
            print(f"screenshot: {args.screenshot}")
    finally:
        chrome.quit()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
