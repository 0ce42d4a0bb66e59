"""End to end in a real browser: ``streamlit run`` + headless Debian chromium driven by Playwright.

Two real dermoscopic images from ``../shared/data/images`` on a tiny model: the gallery shows two
cards with traffic lights, the viewer is in view beside them and the arrow key moves it to the next
image, the plotly bars render, the Grad-CAM overlay renders after switching it on, and the PNG
report downloads without EXIF. Ten real images on the bundled default model: the triage walk-through
(phone width, click a card, arrow keys, filter to red, review, export, reload guard). Skipped, with
the reason, where the real data, Playwright or chromium is missing (``make e2e-deps`` installs
chromium as root).
"""

from __future__ import annotations

import contextlib
import io
import re

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


def ten_real_images(shared_data) -> list:
    """The first five melanomas and first five naevi (by file name) of the ISIC images in ``../shared/data``."""
    import pandas as pd

    table = pd.read_csv(shared_data / "labels.csv", usecols=["image", "diagnosis"])
    table = table[table["image"].str.startswith("ISIC_")].sort_values("image")
    names = [*table[table["diagnosis"] == "MEL"]["image"][:5], *table[table["diagnosis"] == "NV"]["image"][:5]]
    images = [shared_data / "images" / name for name in names]
    assert len(images) == 10 and all(p.is_file() for p in images), f"need ten real images in {shared_data / 'images'}"
    return images


def card_name(card) -> str:
    """The file name of a gallery card (from its "Select x" / "Showing x" button)."""
    label = card.locator("[class*='st-key-select_'] button").first.inner_text()
    found = re.search(r"(?:Select|Showing) (\S+)", label)
    assert found, f"no image name on the card's button: {label!r}"
    return found.group(1)


def test_worklist_of_ten_images_on_the_bundled_model(browser_ready, shared_data, tmp_path):
    """The issue's walk-through on the bundled default model and 10 real images.

    At 390 px the viewer comes before the gallery; on a wide screen a click on a card opens it, the
    arrow keys move through the gallery, the light filter keeps only red cards, one image is marked
    reviewed and the CSV carries the decision; a reload asks first (the worklist lives in memory only).
    """
    import pandas as pd
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    images = ten_real_images(shared_data)
    bundled = driver.REPO_ROOT / "assets" / "models"
    env = {"DERMALENS_MODELS_DIR": str(bundled), "DERMALENS_MODEL": str(bundled / "default")}
    wait = 60_000
    expect.set_options(timeout=wait)
    with driver.streamlit_server(env, tmp_path / "streamlit.log") as url, driver.browser_page(390, 844) as page:
        try:
            driver.open_app(page, url)
            driver.upload(page, images)
            cards = page.locator(driver.CARD)
            expect(cards).to_have_count(10)
            for i in range(10):  # every image analysed
                expect(cards.nth(i).locator(".dl-light")).to_have_count(1)
            driver.wait_idle(page)
            # Phone width: the sidebar starts collapsed (it would cover the image) and the viewer is above
            # the gallery, so it is reached without scrolling past it.
            expect(page.get_by_test_id("stSidebar")).to_have_attribute("data-collapsed", "true")
            viewer_title = page.get_by_text(f"Viewer: {images[0].name}")
            expect(viewer_title).to_be_visible()
            assert viewer_title.bounding_box()["y"] < cards.first.bounding_box()["y"]
            assert viewer_title.bounding_box()["y"] < 1500

            # A click on a card far down the gallery brings the viewer (above it) back on screen.
            cards.nth(8).evaluate("card => card.scrollIntoView({block: 'end'})")
            cards.nth(8).locator("img").first.click()
            phone_title = page.get_by_text(f"Viewer: {card_name(cards.nth(8))}")
            expect(phone_title).to_be_in_viewport()
            driver.wait_idle(page)

            page.set_viewport_size({"width": 1600, "height": 1100})
            names = [card_name(cards.nth(i)) for i in range(10)]
            assert sorted(names) == sorted(p.name for p in images)
            # A click on the card itself (its thumbnail) opens it in the viewer; the arrow keys move on.
            cards.nth(2).locator("img").first.click()
            expect(page.get_by_text(f"Viewer: {names[2]}")).to_be_visible()
            driver.wait_idle(page)
            page.get_by_role("heading", name="DermaLens").first.click()
            page.keyboard.press("ArrowRight")
            expect(page.get_by_text(f"Viewer: {names[3]}")).to_be_visible()
            driver.wait_idle(page)
            page.keyboard.press("ArrowLeft")
            expect(page.get_by_text(f"Viewer: {names[2]}")).to_be_visible()
            driver.wait_idle(page)
            # The viewer stays in view: scrolled down to the last card and clicked, it is on screen there.
            cards.nth(9).evaluate("card => card.scrollIntoView({block: 'end'})")
            cards.nth(9).locator("img").first.click()
            last_title = page.get_by_text(f"Viewer: {names[9]}")
            expect(last_title).to_be_visible()
            driver.wait_idle(page)
            box = last_title.bounding_box()
            assert 0 <= box["y"] < 1100, f"the viewer scrolled out of view: title at y = {box['y']}"
            assert cards.nth(9).bounding_box()["y"] < 1100  # and the clicked card is still on screen too
            cards.nth(2).locator("img").first.click()
            expect(page.get_by_text(f"Viewer: {names[2]}")).to_be_visible()
            driver.wait_idle(page)

            # Filter to red: only the red cards stay.
            lights = {card_name(cards.nth(i)): cards.nth(i).locator(".dl-light").get_attribute("aria-label").split()[0]
                      for i in range(10)}
            red = sorted(n for n, light in lights.items() if light == "Red")
            assert red, f"the bundled model lit none of these melanomas and naevi red: {lights}"
            driver.pick_option(page, ".st-key-gallery_lights", "High risk")
            page.keyboard.press("Escape")
            expect(cards).to_have_count(len(red))
            assert sorted(card_name(cards.nth(i)) for i in range(len(red))) == red

            # Open the first red card, mark it reviewed: its card says so, and the CSV carries the decision.
            reviewed = card_name(cards.first)
            cards.first.locator("img").first.click()
            expect(page.get_by_text(f"Viewer: {reviewed}")).to_be_visible()
            driver.wait_idle(page)
            page.locator("[class*='st-key-decision_']").first.click()
            page.get_by_role("option", name="Excise").click()
            expect(page.get_by_text("Reviewed: Excise")).to_be_visible()
            driver.wait_idle(page)
            with page.expect_download(timeout=wait) as download:
                page.get_by_role("button", name="Results table (CSV)").click()
            table = pd.read_csv(download.value.path())
            assert len(table) == 10
            assert list(table.loc[table["image"] == reviewed, "decision"]) == ["Excise"]
            assert set(table["decision"].fillna("")) == {"Excise", ""}
            exported = dict(zip(table["image"], table["traffic_light"], strict=True))
            assert exported == {n: lights[n].lower() for n in names}

            # Patient ID typed once for two images, the one in the viewer among them: its own field shows it.
            page.get_by_text("Patient ID and metadata for several images").click()
            for name in (reviewed, names[0] if names[0] != reviewed else names[1]):
                driver.pick_option(page, ".st-key-patient_images", name)
            page.keyboard.press("Escape")
            page.locator(".st-key-patient_id_value input").fill("P-17")
            page.get_by_role("button", name="Apply to chosen images").click()
            expect(page.get_by_text("Applied to 2 images.")).to_be_visible()
            own = page.get_by_label(f"Patient ID of {reviewed}")
            expect(own).to_have_value("P-17")
            driver.wait_idle(page)

            # A reload would discard the in-memory worklist: the browser asks first; staying keeps it all.
            asked: list[str] = []
            page.on("dialog", lambda dialog: (asked.append(dialog.type), dialog.dismiss()))
            with contextlib.suppress(PlaywrightTimeout):  # the dismissed dialog cancels the reload
                page.reload(timeout=5_000)
            assert asked == ["beforeunload"]
            expect(cards).to_have_count(len(red))
            expect(page.get_by_text("Reviewed: Excise")).to_be_visible()

            # One remove action: the x on a file's chip in the uploader drops its card too.
            chip = page.get_by_test_id("stFileChip").filter(has_text=red[-1])
            chip.get_by_test_id("stFileChipDeleteBtn").get_by_role("button").click()
            expect(cards).to_have_count(len(red) - 1)
            assert red[-1] not in [card_name(cards.nth(i)) for i in range(len(red) - 1)]
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"))  # stays in pytest's tmp dir, never the repo
            raise
