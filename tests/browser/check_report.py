"""Open the demo's report.html in headless Chromium and check what a reader sees.

Run by ``make test-browser`` (not part of ``make test``: it needs Chromium and chromedriver from the
system and selenium in the venv). Checks, each a failure with one line saying what is wrong:

- the page loads without console errors;
- the summary page (summary.html, embedded in report.html) opens from the report's Table IV category
  and shows every section heading of summary.md;
- Table IV's cells there show the numbers of table4.csv;
- every figure on it decodes (natural width > 0);
- a screenshot of the first screen and of the summary page go to results/report/.

    python tests/browser/check_report.py [results/report]
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pandas as pd
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

CHROMEDRIVER = "/usr/bin/chromedriver"


def browser() -> webdriver.Chrome:
    o = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        o.add_argument(arg)
    o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=o)


def wait_for(find, what: str, timeout: float = 20.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            found = find()
            if found:
                return found
        except Exception:  # noqa: BLE001 (the page is still building: try again)
            pass
        time.sleep(0.25)
    raise AssertionError(f"{what} did not appear within {timeout:g} s")


def headings(md: str) -> list[str]:
    return [re.sub(r"^#+\s*", "", ln).strip() for ln in md.splitlines() if re.match(r"^#{1,3}\s", ln)]


def table4_numbers(csv: Path) -> list[str]:
    """The accuracies (%) of table4.csv as the summary prints them, and the paper's."""
    t4 = pd.read_csv(csv)
    values = list(t4["accuracy_mean"].dropna()) + list(t4["paper_accuracy"].dropna())
    return [f"{v:.2f}" for v in values]


def check(report_dir: Path) -> list[str]:
    problems = []
    page = (report_dir / "report.html").resolve()
    md = (report_dir / "summary.md").read_text()
    d = browser()
    try:
        d.get(page.as_uri())
        wait_for(lambda: d.find_elements(By.XPATH, "//*[text()='Table IV']"), "the Table IV category")
        d.save_screenshot(str(report_dir / "report_first_screen.png"))
        severe = [e["message"] for e in d.get_log("browser") if e["level"] == "SEVERE"]
        problems += [f"console error: {m}" for m in severe]

        d.find_element(By.XPATH, "//*[text()='Table IV']").click()
        # results are listed by their labels (rules/report.smk), not by file name; the eye shows one
        eye = wait_for(
            lambda: d.find_elements(
                By.XPATH, "//tr[td[starts-with(normalize-space(.), 'summary:')]]//a[@iconname='eye']"
            ),
            "the summary item under Table IV",
        )
        eye[0].click()
        frame = wait_for(lambda: d.find_elements(By.TAG_NAME, "iframe"), "the summary page's frame")
        d.switch_to.frame(frame[0])
        wait_for(lambda: d.find_elements(By.TAG_NAME, "h2"), "the summary page's headings")
        shown = {h.text.strip() for h in d.find_elements(By.XPATH, "//h1|//h2|//h3")}
        problems += [
            f"summary.md section missing from the page: {h!r}" for h in headings(md) if h not in shown
        ]

        t4_table = d.find_elements(By.XPATH, "//h2[starts-with(., 'Table IV')]/following-sibling::table[1]")
        cells = " ".join(td.text for td in t4_table[0].find_elements(By.TAG_NAME, "td")) if t4_table else ""
        if not t4_table:
            problems.append("no HTML table after the Table IV heading")
        problems += [
            f"Table IV shows no cell with {n} (table4.csv)"
            for n in table4_numbers(report_dir / "table4.csv")
            if n not in cells
        ]

        imgs = d.find_elements(By.TAG_NAME, "img")
        if not imgs:
            problems.append("the summary page has no figure")
        for img in imgs:
            d.execute_script("arguments[0].scrollIntoView();", img)
            ok = d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0;", img)
            if not ok:
                problems.append(f"figure does not decode: {img.get_attribute('alt')!r}")
        d.execute_script("window.scrollTo(0, 0);")
        d.switch_to.default_content()
        d.save_screenshot(str(report_dir / "report_summary.png"))
        print(f"checked {len(shown)} headings, {len(imgs)} figures, Table IV cells: {cells[:200]!r}")
    finally:
        d.quit()
    return problems


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "results/report")
    found = check(out)
    for p in found:
        print("FAIL:", p)
    print(f"report.html in a browser: {'ok' if not found else f'{len(found)} problem(s)'}")
    sys.exit(1 if found else 0)
