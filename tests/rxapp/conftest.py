"""A real app server on the micro model (or the shipped default) and a real SQLite file, shared by the UI and browser
tests."""

import socket
import sqlite3
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from gradio_client import Client

from pipeline.data.records import load_split
from rxapp import DEFAULT_MODEL
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


def serve(model, db_folder) -> Iterator[SimpleNamespace]:
    """The app on `model`, with a new feedback database in `db_folder`, until the caller is done."""
    with Engine() as engine:
        engine.load(model, "llama", "cpu")
        assert engine.model is not None, engine.error
        store = FeedbackStore(db_folder / "rx.sqlite")
        app = build_app(engine, store)
        port = free_port()
        app.launch(prevent_thread_lock=True, quiet=True, **launch_options("127.0.0.1", port))
        url = f"http://127.0.0.1:{port}/"
        try:
            yield SimpleNamespace(url=url, store=store, engine=engine, client=Client(url, verbose=False))
        finally:
            app.close()


@pytest.fixture(scope="module")
def served(micro_export, tmp_path_factory):
    yield from serve(micro_export / "model-f16.gguf", tmp_path_factory.mktemp("db"))


@pytest.fixture(scope="module")
def served_default(tmp_path_factory):
    """The app on the shipped default model, the one trained to revise drafts."""
    yield from serve(DEFAULT_MODEL, tmp_path_factory.mktemp("db"))
