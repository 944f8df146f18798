"""The web app as a real server: gradio_client calls, HTML escaping, and `python launch.py` itself."""

import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from gradio_client import Client

from rxapp.ui import build_app, launch_options
from tests.conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client():
    app = build_app()
    port = free_port()
    app.launch(prevent_thread_lock=True, quiet=True, **launch_options("127.0.0.1", port))
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        app.close()


def test_check_endpoint_shows_sourced_severe_warning(client):
    page = client.predict("附子 半夏", False, "附子=30", api_name="/check")
    assert page.count('class="rx-warning rx-severe"') == 2  # 十八反 and the dose
    assert "十八反" in page and "siliu.net" in page


def test_check_endpoint_explains_bad_doses(client):
    assert "positive" in client.predict("附子", False, "附子=-1", api_name="/check")


def test_user_text_is_escaped_never_rendered(client):
    page = client.predict("<img src=x onerror=alert(1)> 附子", False, "", api_name="/check")
    assert "<img" not in page and "&lt;img" in page
    parsed = client.predict("恶寒发热 <b>x</b>", api_name="/parse_symptoms")
    assert "恶寒发热" in parsed and "&lt;b&gt;" in parsed and "<b>x" not in parsed


def test_launch_py_serves_on_loopback_without_outside_assets():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "launch.py", "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.5)
        else:
            pytest.fail("launch.py did not serve within 120 s")
        assert "rx" in page
        assert not re.search(r"fonts\.googleapis|cdn\.jsdelivr|unpkg\.com", page)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert f"http://127.0.0.1:{port}" in output
