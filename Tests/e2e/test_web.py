"""`umdev view --http`: the page in headless Chromium shows the guests' screens."""
import json
import time

import pytest

from browser import Browser
from conftest import free_port, mismatches, pattern_pixel, pattern_rows, png_rows, wait_for


def samples_match(browser, index, width, height, seed):
    """A cheap look: the canvas's size and a grid of its pixels, read in the page."""
    points = [(x * (width - 1) // 7, y * (height - 1) // 7) for x in range(8) for y in range(8)]
    expected = [pattern_pixel(x, y, width, height, seed) for x, y in points]
    got = browser.evaluate(
        f"(() => {{ const c = document.querySelectorAll('canvas')[{index}];"
        f" if (c.width !== {width} || c.height !== {height}) return null;"
        f" const d = c.getContext('2d'); return {json.dumps(points)}.map(([x, y]) => {{"
        f" const p = d.getImageData(x, y, 1, 1).data; return p[0] << 16 | p[1] << 8 | p[2]; }}); }})()")
    return got == expected


@pytest.mark.parametrize("tiles", ["raw", "png"])
def test_page_shows_mdpy_and_mbochs_and_follows_changes(umdev, tiles):
    mdpy = umdev.serve("mdpy-xga")
    mbochs = umdev.serve("mbochs-medium")
    umdev.play(mdpy, "--seed", "3")
    umdev.play(mbochs, "--mode", "800x600", "--pan", "0,128", "--seed", "4")
    port = free_port()
    umdev.view("--socket", mdpy + ".display", "--socket", mbochs + ".display",
               "--http", f"127.0.0.1:{port}", "--http-tiles", tiles)
    browser = Browser(f"http://127.0.0.1:{port}/")
    try:
        wait_for(lambda: browser.evaluate("window.umdevFrames && window.umdevFrames.length === 2"
                                          " && window.umdevFrames.every(n => n > 0)"),
                 timeout=30, step=0.1, what="frames on both canvases")

        def shows(index, width, height, seed):
            w, h, rows = png_rows(browser.canvas_png(index))
            return (w, h) == (width, height) and mismatches(rows, pattern_rows(width, height, seed)) == 0
        wait_for(lambda: shows(0, 1024, 768, 3), timeout=10, step=0.2, what="mdpy's pattern")
        wait_for(lambda: shows(1, 800, 600, 4), timeout=10, step=0.2, what="mbochs's pattern")
        facts = browser.evaluate("document.body.innerText")
        assert "dmabuf" in facts and "region" in facts and "XR24" in facts and "1024×768" in facts and "800×600" in facts

        # The guests draw something else: the page shows it within a second.
        umdev.play(mdpy, "--seed", "77")
        started = time.time()
        wait_for(lambda: samples_match(browser, 0, 1024, 768, 77), timeout=5, step=0.02, what="mdpy's new pattern")
        assert time.time() - started < 1.0
        umdev.play(mbochs, "--mode", "640x480", "--seed", "78")
        started = time.time()
        wait_for(lambda: samples_match(browser, 1, 640, 480, 78), timeout=5, step=0.02, what="mbochs's new mode")
        assert time.time() - started < 1.0
        # And pixel for pixel.
        assert shows(0, 1024, 768, 77) and shows(1, 640, 480, 78)
    finally:
        browser.close()


def test_page_late_browser_gets_a_full_frame(umdev):
    mbochs = umdev.serve("mbochs-small")
    umdev.play(mbochs, "--mode", "640x480", "--seed", "5")
    port = free_port()
    umdev.view("--socket", mbochs + ".display", "--http", f"127.0.0.1:{port}")
    time.sleep(2)   # nothing changes after this: only a full frame can show the picture
    browser = Browser(f"http://127.0.0.1:{port}/")
    try:
        wait_for(lambda: browser.evaluate("(window.umdevFrames || [])[0] > 0"), timeout=30, step=0.1, what="a frame")
        w, h, rows = png_rows(browser.canvas_png(0))
        assert (w, h) == (640, 480) and mismatches(rows, pattern_rows(640, 480, 5)) == 0
    finally:
        browser.close()


def test_page_shows_a_screen_1_to_1_when_it_fits_and_scaled_otherwise(umdev):
    mbochs = umdev.serve("mbochs-large")
    umdev.play(mbochs, "--mode", "1920x1080", "--seed", "9")
    port = free_port()
    umdev.view("--socket", mbochs + ".display", "--http", f"127.0.0.1:{port}")
    width = "document.querySelector('canvas').getBoundingClientRect().width"
    for window, fits in (((2400, 1400), True), ((1280, 800), False)):
        browser = Browser(f"http://127.0.0.1:{port}/", window=window)
        try:
            wait_for(lambda: browser.evaluate("document.querySelector('canvas') && document.querySelector('canvas').width === 1920"),
                     timeout=30, step=0.1, what="the 1920x1080 screen")
            shown = browser.evaluate(width)
            scale = browser.evaluate("document.querySelector('.scale').textContent")
            if fits:
                # A 1920-wide screen in a 2400-wide window: every guest pixel is one page pixel.
                assert shown == 1920, shown
                assert scale == "shown 1:1"
            else:
                assert shown < 1280, shown
                assert scale.startswith("shown at ") and scale.endswith(" %"), scale
                # The toggle shows it at its own size, and back.
                browser.evaluate("document.getElementById('size').click()")
                assert browser.evaluate(width) == 1920
                assert browser.evaluate("document.querySelector('.scale').textContent") == "shown 1:1"
                browser.evaluate("document.getElementById('size').click()")
                assert browser.evaluate(width) == shown
            # The picture is the guest's either way, pixel for pixel.
            w, h, rows = png_rows(browser.canvas_png(0))
            assert (w, h) == (1920, 1080) and mismatches(rows, pattern_rows(1920, 1080, 9)) == 0
        finally:
            browser.close()
