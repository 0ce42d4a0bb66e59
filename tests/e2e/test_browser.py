"""End to end in a real browser: ``streamlit run`` + headless Debian chromium driven by Playwright.

Uploads two real dermoscopic images from ``../shared/data/images`` and checks that the gallery
shows two cards with traffic lights, the viewer is in view beside them and the arrow key moves it to
the next image, the plotly bars render, the Grad-CAM overlay renders after
switching it on, and the PNG report downloads without EXIF. Skipped, with the reason, where the
real data, Playwright or chromium is missing (``make e2e-deps`` installs chromium as root).
"""

from __future__ import annotations

import io

import pytest

from backend.data.schema import DIAGNOSES
from tests.e2e import driver

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def browser_ready() -> None:
    """Skip (before any model is trained) where Playwright or Debian's chromium is missing."""
    pytest.importorskip("playwright.sync_api",
                        reason="playwright is not installed (pip install -r requirements-dev.txt)")
    if driver.chromium_path() is None:
        pytest.skip("Debian chromium is not installed: run `make e2e-deps` as root (apt-get install -y chromium); "
                    "Playwright drives the system chromium, never a downloaded one")


def test_upload_gallery_bars_and_grad_cam_in_chromium(browser_ready, shared_data, e2e_models, tmp_path):
    from PIL import Image
    from playwright.sync_api import expect

    images = sorted((shared_data / "images").glob("ISIC_*.jpg"))[:2]
    assert len(images) == 2, f"need two real images in {shared_data / 'images'}"
    wait = 60_000
    expect.set_options(timeout=wait)  # a busy 2-core machine: generous, auto-retrying assertions
    with driver.streamlit_server(e2e_models.env(), tmp_path / "streamlit.log") as url, \
            driver.browser_page() as page:
        try:
            driver.open_app(page, url)
            expect(page.get_by_test_id("stSidebar")).to_contain_text("Tiny fusion")
            driver.upload(page, images)
            cards = page.locator(driver.CARD)
            expect(cards).to_have_count(2)
            for i in range(2):
                card = cards.nth(i)
                thumbnail = card.locator("img").first
                expect(thumbnail).to_be_visible(timeout=wait)
                thumbnail.evaluate("i => i.decode()")  # resolves once the picture is decoded, rejects if broken
                light = card.locator(".dl-light")
                expect(light).to_have_count(1)
                expect(light).to_contain_text("risk")
                assert light.get_attribute("aria-label").split()[0] in ("Green", "Yellow", "Red")
            # Benign/malignant bars (2) and the all-classes bars (one per diagnosis) of the viewer.
            expect(page.locator("[data-testid=stPlotlyChart] g.trace.bars path")).to_have_count(
                2 + len(DIAGNOSES), timeout=wait)
            viewer_title = page.get_by_text(f"Viewer: {images[0].name}")
            expect(viewer_title).to_be_visible()
            assert viewer_title.bounding_box()["y"] < 1100  # master-detail: the viewer is in view, beside the gallery
            assert cards.first.bounding_box()["x"] < viewer_title.bounding_box()["x"]  # gallery left on a wide screen
            page.set_viewport_size({"width": 600, "height": 1100})  # narrow: columns stack, the viewer on top
            expect(viewer_title).to_be_visible()
            page.wait_for_function("(() => { const c = document.querySelector(\"" + driver.CARD + "\"); "
                                   "return c && c.getBoundingClientRect().width > 400; })()")
            assert viewer_title.bounding_box()["y"] < cards.first.bounding_box()["y"]
            page.set_viewport_size({"width": 1600, "height": 1100})

            # The right arrow key clicks "Next image"; a card's named button selects it back.
            page.get_by_role("heading", name="DermaLens").first.click()
            page.keyboard.press("ArrowRight")
            expect(page.get_by_text(f"Viewer: {images[1].name}")).to_be_visible()
            page.get_by_role("button", name=f"Select {images[0].name}").click()
            expect(page.get_by_text(f"Viewer: {images[0].name}")).to_be_visible()
            driver.wait_idle(page)
            # A click on the card itself (its thumbnail, not a button) opens it too.
            cards.nth(1).locator("img").first.click()
            expect(page.get_by_text(f"Viewer: {images[1].name}")).to_be_visible()
            cards.nth(0).locator("img").first.click()
            expect(page.get_by_text(f"Viewer: {images[0].name}")).to_be_visible()
            driver.wait_idle(page)

            driver.show_grad_cam(page)
            assert page.locator(driver.OVERLAY).evaluate("i => i.naturalWidth") > 0

            driver.wait_idle(page)
            with page.expect_download(timeout=wait) as download:
                page.get_by_role("button", name="Report of selected image (PNG)").click()
            report = Image.open(io.BytesIO(download.value.path().read_bytes()))
            assert report.format == "PNG" and not report.getexif()
            assert download.value.suggested_filename == f"{images[0].stem}_dermalens_report.png"
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"))  # stays in pytest's tmp dir, never the repo
            raise


def test_worklist_of_ten_images_filter_review_export_and_phone_width(browser_ready, shared_data, e2e_models,
                                                                       tmp_path):
    """10 real images: filter by a light, mark one reviewed, export the CSV; at 390 px the viewer comes first."""
    import pandas as pd
    from playwright.sync_api import expect

    images = sorted((shared_data / "images").glob("ISIC_*.jpg"))[:10]
    assert len(images) == 10, f"need ten real images in {shared_data / 'images'}"
    wait = 60_000
    expect.set_options(timeout=wait)
    with driver.streamlit_server(e2e_models.env(), tmp_path / "streamlit.log") as url, \
            driver.browser_page(390, 844) as page:
        try:
            driver.open_app(page, url)
            driver.upload(page, images)
            cards = page.locator(driver.CARD)
            expect(cards).to_have_count(10)
            expect(cards.nth(9).locator(".dl-light")).to_have_count(1)  # every image analysed
            driver.wait_idle(page)
            # Phone width: the viewer is above the gallery, so it is reached without scrolling past it.
            viewer_title = page.get_by_text(f"Viewer: {images[0].name}")
            expect(viewer_title).to_be_visible()
            assert viewer_title.bounding_box()["y"] < cards.first.bounding_box()["y"]
            assert viewer_title.bounding_box()["y"] < 1500

            page.set_viewport_size({"width": 1600, "height": 1100})
            # Filter to the light of the first card (red with a real model; whatever the tiny model gave).
            first_light = cards.first.locator(".dl-light").get_attribute("aria-label").split()[0].lower()
            words = {"red": "High risk", "yellow": "Medium risk", "green": "Low risk", "grey": "Not assessable"}
            lights = [cards.nth(i).locator(".dl-light").get_attribute("aria-label").split()[0].lower()
                      for i in range(10)]
            page.locator(".st-key-gallery_lights").click()
            page.get_by_role("option", name=words[first_light]).click()
            page.keyboard.press("Escape")
            expect(cards).to_have_count(lights.count(first_light))
            for i in range(cards.count()):
                assert cards.nth(i).locator(".dl-light").get_attribute("aria-label").lower().startswith(first_light)

            # Mark the image in the viewer reviewed: its card says so, and the CSV carries the decision.
            page.locator("[class*='st-key-decision_']").first.click()
            page.get_by_role("option", name="Excise").click()
            expect(page.get_by_text("Reviewed: Excise")).to_be_visible()
            driver.wait_idle(page)
            with page.expect_download(timeout=wait) as download:
                page.get_by_role("button", name="Results table (CSV)").click()
            table = pd.read_csv(download.value.path())
            assert len(table) == 10
            row = table[table["image"] == images[0].name]
            assert list(row["decision"]) == ["Excise"]
            assert set(table["decision"].fillna("")) == {"Excise", ""}
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"))  # stays in pytest's tmp dir, never the repo
            raise
