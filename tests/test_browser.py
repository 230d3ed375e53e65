"""The drawing page in a real headless browser: Playwright driving Debian's Chromium against waitress."""

from __future__ import annotations

import pytest
from web_support import BackgroundServer, small_model_path

pytestmark = pytest.mark.browser



@pytest.fixture(scope="module")
def server(tmp_path_factory, shared_data):
    from scratchpilot.web.app import create_app

    with BackgroundServer(create_app(small_model_path(tmp_path_factory)), threads=4) as running:
        yield running.url




@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1000, "height": 760}, device_scale_factor=1)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(server + "/")
    yield page
    context.close()
    assert not errors, errors  # no script errors, nothing blocked by the content security policy


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def stroke(page, points: list[tuple[float, float]], steps: int = 6) -> None:
    """Draw one stroke through ``points`` (fractions of the pad's size) with the mouse."""
    box = page.locator("#pad").bounding_box()
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in xy[1:]:
        page.mouse.move(x, y, steps=steps)
    page.mouse.up()


def probabilities(page) -> list[float]:
    shown = page.locator("#bars li").evaluate_all("els => els.map(e => e.dataset.probability)")
    return [float(p) for p in shown if p is not None]


def test_draw_a_seven_and_read_the_prediction(page, artifacts_dir):
    assert page.locator("#label").inner_text() == "?"
    assert "784-128-10" in page.locator("#model-info").inner_text()
    # a "7" drawn off-centre towards the left: top bar, then the diagonal down
    stroke(page, [(0.12, 0.20), (0.55, 0.18), (0.62, 0.20)])
    stroke(page, [(0.62, 0.20), (0.48, 0.45), (0.36, 0.72), (0.30, 0.86)])
    label = page.locator("#label")
    # live predictions follow the strokes; the last one answers for the finished drawing
    expect(label).to_have_attribute("data-label", "7")
    page.wait_for_timeout(300)
    assert label.inner_text() == "7"
    shown = probabilities(page)
    assert len(shown) == 10 and abs(sum(shown) - 1) < 1e-3 and shown[7] == max(shown) and shown[7] > 0.5
    assert page.locator("#bars li.top").get_attribute("data-label") == "7"
    assert "% sure" in page.locator("#confidence").inner_text()
    # the preview shows the 28×28 digit the network saw: white ink, centred
    corner, middle = page.evaluate("""() => {
        const data = document.getElementById('preview').getContext('2d').getImageData(0, 0, 28, 28).data;
        let middle = 0;
        for (let y = 8; y < 20; y++) for (let x = 8; x < 20; x++) middle = Math.max(middle, data[4 * (28 * y + x)]);
        return [data[0], middle];
    }""")
    assert corner == 0 and middle == 255
    page.screenshot(path=str(artifacts_dir / "web-draw-7.png"), full_page=True)

    page.locator("#clear").click()
    assert label.inner_text() == "?" and probabilities(page) == []


def test_draw_a_one_then_upload_an_image(page, artifacts_dir, tmp_path):
    stroke(page, [(0.70, 0.15), (0.68, 0.50), (0.66, 0.88)])
    expect(page.locator("#label")).to_have_attribute("data-label", "1")

    from PIL import Image, ImageDraw

    picture = Image.new("L", (300, 400), 235)  # a "0" in dark ink on grey paper, as a phone might see it
    ImageDraw.Draw(picture).ellipse((70, 60, 230, 340), outline=30, width=26)
    path = tmp_path / "zero.png"
    picture.save(path)
    page.locator("#upload").set_input_files(str(path))
    expect(page.locator("#label")).to_have_attribute("data-label", "0")
    assert probabilities(page)[0] > 0.5
    page.wait_for_timeout(400)  # let the bars' width transition finish before the picture
    page.screenshot(path=str(artifacts_dir / "web-upload-0.png"), full_page=True)


def test_draw_with_touch(browser, server, artifacts_dir):
    """A finger on a touch screen: real touch events (through the DevTools protocol) become pointer events."""
    context = browser.new_context(viewport={"width": 420, "height": 900}, has_touch=True, is_mobile=True)
    try:
        page = context.new_page()
        page.goto(server + "/")
        box = page.locator("#pad").bounding_box()
        cdp = context.new_cdp_session(page)
        x = box["x"] + 0.5 * box["width"]
        points = [(x + 0.02 * box["width"] * t, box["y"] + box["height"] * (0.15 + 0.7 * t))
                  for t in (i / 12 for i in range(13))]
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": points[0][0],
                                                                                   "y": points[0][1]}]})
        for px, py in points[1:]:
            cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": px, "y": py}]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        expect(page.locator("#label")).to_have_attribute("data-label", "1")
        assert page.evaluate("window.scrollY") == 0  # the stroke drew; it did not scroll the page
        page.wait_for_timeout(400)  # bars' width transition
        page.screenshot(path=str(artifacts_dir / "web-touch-1-phone.png"), full_page=True)
    finally:
        context.close()
