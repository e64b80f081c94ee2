"""Screenshots of ``chargen inspect``'s HTML report in headless Chromium: shaded by surprise, and recoloured
by one unit, for the closing note of issue 34 and the docs.

    python scripts/inspect_screenshot.py RUN TEXT_FILE OUT_PREFIX [--unit "layer 1|h|95"]

Writes OUT_PREFIX.html, OUT_PREFIX-surprise.png and, with --unit, OUT_PREFIX-unit.png. Needs Debian's
chromium and chromium-driver and selenium (a dev dependency)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("text_file")
    p.add_argument("out_prefix")
    p.add_argument("--unit", help='the unit to recolour by, as "layer K|KIND|INDEX" (such as "layer 1|h|95")')
    args = p.parse_args()
    page = Path(args.out_prefix + ".html").resolve()
    subprocess.run(
        ["chargen", "inspect", args.run, "--file", args.text_file, "--format", "html", "-o", str(page)], check=True
    )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import Select

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,1500", "--no-first-run"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path="/usr/bin/chromedriver"))
    try:
        driver.get(page.as_uri())
        driver.save_screenshot(args.out_prefix + "-surprise.png")
        print(f"wrote {args.out_prefix}-surprise.png")
        if args.unit:
            layer, kind, index = args.unit.split("|")
            Select(driver.find_element("id", "unit-layer")).select_by_value(f"{layer}|{kind}")
            Select(driver.find_element("id", "unit-index")).select_by_value(index)
            driver.save_screenshot(args.out_prefix + "-unit.png")
            print(f"wrote {args.out_prefix}-unit.png")
    finally:
        driver.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
