"""Copies the default run's report into docs/example-report/, with a full-page picture of it.

After `make repro` (or `dvc pull`) of the committed defaults, reports/report.html is the page that
dvc.lock records. This script copies it to docs/example-report/report.html, so that a reader can see
a report without running anything, and takes a full-page PNG of it, 1280 pixels wide, with headless
Chromium (docs/example-report/report.png, which GitHub shows in the browser). Run it as
`make example-report` and commit both files with the dvc.lock and reports/ of the same run;
tests/test_report.py fails while the copy differs from what dvc.lock and reports/metrics.json record.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "reports" / "report.html"
FOLDER = ROOT / "docs" / "example-report"
WIDTH = 1280
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--hide-scrollbars",
)


def chromium(profile: Path, *args: str) -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if binary is None:
        sys.exit("error: chromium is not installed (sudo apt-get install chromium)")
    return subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=180,
    ).stdout


def page_height(page: Path, scratch: Path) -> int:
    """The height of the page laid out WIDTH pixels wide (a probe script writes it into the title)."""
    probe = scratch / "probe.html"
    script = "<script>document.title = 'height ' + document.documentElement.scrollHeight;</script></body>"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", script), encoding="utf-8")
    dom = chromium(scratch / "profile", f"--window-size={WIDTH},2000", "--dump-dom", probe.as_uri())
    return int(re.search(r"<title>height (\d+)</title>", dom).group(1))


def main() -> int:
    if not SOURCE.is_file():
        sys.exit(f"error: {SOURCE.relative_to(ROOT)}: not found (run `make repro` or `dvc pull` first)")
    FOLDER.mkdir(parents=True, exist_ok=True)
    page = FOLDER / "report.html"
    shutil.copyfile(SOURCE, page)
    with tempfile.TemporaryDirectory() as scratch:
        height = page_height(page, Path(scratch))
        chromium(
            Path(scratch) / "profile",
            f"--window-size={WIDTH},{height}",
            f"--screenshot={FOLDER / 'report.png'}",
            page.as_uri(),
        )
    print(f"wrote {page.relative_to(ROOT)} and {(FOLDER / 'report.png').relative_to(ROOT)} ({WIDTH}x{height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
