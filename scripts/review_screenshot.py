#!/usr/bin/env python3
"""Take the screenshot of the review workbench that docs/review.md shows.

Serves OUT_DIR (a finished scan) on a free local port, opens it in headless Chromium (Debian's
package, see scripts/install_browser.sh), labels the first N listings with the keyboard as a
reviewer would, and saves a PNG of the page at the next one.

    python scripts/review_screenshot.py counterfeit-demo/scan docs/review.png [--label 7]
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import tempfile
import time
from pathlib import Path


from detector.review_server import Workbench, running


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="a finished scan's OUT_DIR (copied: its labels are left alone)")
    parser.add_argument("png", type=Path, help="where to write the screenshot")
    parser.add_argument("--label", type=int, default=7, help="listings to label before the shot")
    args = parser.parse_args(argv)

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains

    with tempfile.TemporaryDirectory() as work:
        scan = Path(shutil.copytree(args.out_dir, Path(work) / "scan"))
        (scan / "review" / "labels.sqlite").unlink(missing_ok=True)
        token = secrets.token_urlsafe(16)
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or "chromium"
        for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,980"):
            options.add_argument(argument)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=options)
        try:
            with running(Workbench(scan, token)) as url:
                driver.get(f"{url}/?token={token}")
                time.sleep(1.5)
                driver.find_element("id", "reviewer").send_keys("ann\n")
                for key in ("cgc" * args.label)[: args.label]:
                    ActionChains(driver).send_keys(key).perform()
                    time.sleep(0.6)
                driver.save_screenshot(str(args.png))
        finally:
            driver.quit()
    print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
