"""A real app server on the micro model and a real SQLite file, shared by the UI and browser tests."""

import socket
import sqlite3
from types import SimpleNamespace

import pytest
from gradio_client import Client

from pipeline.data.records import load_split
from rxapp.engine import Engine
from rxapp.feedback import FeedbackStore
from rxapp.ui import build_app, launch_options


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def feedback_rows(db_path) -> list[dict]:
    conn = sqlite3.connect(db_path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM feedback ORDER BY id")]
    finally:
        conn.close()


@pytest.fixture(scope="session")
def symptom_text() -> str:
    """A test-split patient's symptoms as a practitioner would type them."""
    return "，".join(load_split("test")[0].symptoms)


@pytest.fixture(scope="module")
def served(micro_export, tmp_path_factory):
    with Engine() as engine:
        engine.load(micro_export / "model-f16.gguf", "llama", "cpu")
        assert engine.model is not None, engine.error
        store = FeedbackStore(tmp_path_factory.mktemp("db") / "rx.sqlite")
        app = build_app(engine, store)
        port = free_port()
        app.launch(prevent_thread_lock=True, quiet=True, **launch_options("127.0.0.1", port))
        url = f"http://127.0.0.1:{port}/"
        try:
            yield SimpleNamespace(url=url, store=store, engine=engine, client=Client(url, verbose=False))
        finally:
            app.close()
