"""The report in a real browser: headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium) opens report.html from disk; no console errors, every image decoded with a non-zero size,
every section laid out; screenshots kept as test artefacts ($GSSL_TEST_ARTIFACTS, else pytest's tmp).
A control page with a broken image must fail the same checks, so the checks can fail."""

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="headless Chromium not installed: `apt-get install chromium chromium-driver` "
    "(`GSSL_INSTALL_BROWSER=1 bash install.sh` does it as root)",
)

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium not installed: pip install 'gssl[test]'"
)
pytest.importorskip("matplotlib", reason="the report needs matplotlib (pip install 'gssl[analysis]')")
pytest.importorskip("sklearn", reason="the report's t-SNE needs scikit-learn (pip install 'gssl[analysis]')")

from gssl.cli import main  # noqa: E402

SECTIONS = [
    "Learning curves",
    "Gate weights",
    "Gradient on the shared backbone",
    "Per-class accuracy",
    "Confusion matrix",
    "t-SNE of pooled features",
    "Grad-CAM",
    "Pretext tasks",
]
IMAGES_JS = """return Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete,
  w: i.naturalWidth, h: i.naturalHeight, shown: i.getBoundingClientRect().width}));"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("SE_OFFLINE", "true")  # Selenium Manager must not look for downloads
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    from selenium.webdriver.chrome.service import Service

    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _artifacts(tmp_path: Path) -> Path:
    d = Path(os.environ.get("GSSL_TEST_ARTIFACTS", tmp_path))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _open(driver, path: Path):
    """Load a file:// page; (console errors, images) once every image has finished loading."""
    driver.get_log("browser")  # drop anything from an earlier page
    driver.get(path.resolve().as_uri())
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script(
            "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)"
        )
    )
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    return errors, driver.execute_script(IMAGES_JS)


def test_report_opens_cleanly_in_headless_chromium(browser, tiny_run, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(tiny_run), "--out", str(out), "--gradcam-images", "6"]) == 0
    errors, images = _open(browser, out / "report.html")
    assert errors == [], f"console errors: {errors}"
    assert len(images) == 8, images  # one figure per section
    for img in images:
        assert img["complete"] and img["w"] > 0 and img["h"] > 0 and img["shown"] > 0, img
    headings = browser.execute_script(
        "return Array.from(document.querySelectorAll('h2')).map(h => h.textContent)"
    )
    assert all(s in headings for s in SECTIONS), headings
    assert browser.title.startswith("gssl report")

    art = _artifacts(tmp_path)
    viewport = art / "report-browser-viewport.png"
    assert browser.save_screenshot(str(viewport))
    full = art / "report-browser-full.png"
    height = browser.execute_script("return document.documentElement.scrollHeight")
    shot = browser.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1},
        },
    )
    import base64

    full.write_bytes(base64.b64decode(shot["data"]))
    from PIL import Image

    with Image.open(full) as im:
        assert im.width >= 1000 and im.height >= 2000, im.size  # the whole page, not a blank viewport
        assert len(set(im.convert("L").resize((64, 256)).tobytes())) > 20, "the screenshot is not blank"
    with capsys.disabled():
        print(f"\nbrowser screenshots: {viewport} {full}")


def test_a_broken_image_fails_the_same_checks(browser, tiny_run, tmp_path):
    """Control: the checks above can fail. A page with a missing image gives a console error and width 0."""
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>x</title></head><body><h2>x</h2>"
        '<img src="missing.png" alt="missing"></body></html>'
    )
    errors, images = _open(browser, page)
    assert errors and "missing.png" in errors[0]["message"]
    assert images[0]["w"] == 0
