"""Refresh docs/app.png: the 处方 Recommend tab showing a real recommendation of the shipped default model.

    ./rx exec python docs/screenshot.py

Serves the app in-process on a free local port (with a throw-away feedback database), types a patient's symptoms
into a headless Debian Chromium, clicks 生成处方 Recommend, waits for the recommendation to finish, and keeps the
page from the top down to the last step card (the 方解, the prescription table and its check follow below it).
"""

import socket
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script, docs/ is on the path instead of the repository

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from rxapp import DEFAULT_MODEL  # noqa: E402
from rxapp.engine import Engine  # noqa: E402
from rxapp.feedback import FeedbackStore  # noqa: E402
from rxapp.ui import build_app, launch_options  # noqa: E402

OUT = ROOT / "docs" / "app.png"
SYMPTOMS = "恶寒发热，无汗，头痛身痛，咳嗽气喘，舌苔白"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
WIDTH = 1280


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def screenshot(url: str) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": WIDTH, "height": 900})
        page.goto(url)
        page.get_by_label("症状（自由文本）Symptoms").fill(SYMPTOMS)
        page.get_by_role("button", name="生成处方 Recommend").click()
        # the session id is filled in once the whole recommendation has been written and stored
        expect(page.locator("#rx-session textarea, #rx-session input").first).not_to_have_value("", timeout=120_000)
        last = page.locator("#rx-output .rx-step").last.bounding_box()  # the 方解 and the table follow
        page.screenshot(path=str(OUT), full_page=True,
                        clip={"x": 0, "y": 0, "width": WIDTH, "height": last["y"] + last["height"] + 16})
        browser.close()


def main() -> None:
    with Engine() as engine, tempfile.TemporaryDirectory() as tmp:
        engine.load(DEFAULT_MODEL, "llama", "cpu")
        if engine.model is None:
            sys.exit(f"screenshot: {engine.error}")
        app = build_app(engine, FeedbackStore(Path(tmp) / "feedback.sqlite"))
        port = free_port()
        app.launch(prevent_thread_lock=True, quiet=True, **launch_options("127.0.0.1", port))
        try:
            screenshot(f"http://127.0.0.1:{port}/")
        finally:
            app.close()
    print(f"wrote {OUT.relative_to(ROOT)} ({OUT.stat().st_size // 1024} KiB) from {DEFAULT_MODEL.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
