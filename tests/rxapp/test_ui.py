"""The web app as a real server: streamed recommendations, feedback in the SQLite file, concurrent clients, bad input,
a missing model, `python launch.py` itself and a `kill -9` during a burst of saves."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from gradio_client import Client

from rxapp import DEFAULT_MODEL
from rxapp.engine import Engine
from rxapp.feedback import FeedbackStore
from rxapp.ui import DECODING, build_app, launch_options
from tests.conftest import ROOT
from tests.rxapp.conftest import feedback_rows, free_port

SETTINGS = (False, "未填", "未填", "", 4.0, 20, DECODING[0], 0.7, 0)  # pregnant, age, sex, notes, screen, max herbs, …


def recommend(client, text, picked=(), drugs=(), start="", formula=None):
    job = client.submit(text, list(picked), *SETTINGS, list(drugs), start, formula, api_name="/recommend")
    job.result()
    return job.outputs()


def test_recommend_streams_steps_and_feedback_lands_in_the_database(served, symptom_text):
    updates = recommend(served.client, symptom_text)
    counts = [u[0].count('class="rx-step"') for u in updates]
    assert len([c for c in counts if c]) >= 3 and counts == sorted(counts), counts
    page, session_id, _, _, prescription, _, _ = updates[-1]
    assert "方解" in page and "整方安全核查" in page and re.fullmatch(r"[0-9a-f]{12}", session_id)
    herbs = prescription.split("、")
    assert len(herbs) == counts[-1] and all(h in page for h in herbs)

    first = f"1 加 {herbs[0]}"
    status = served.client.predict(session_id, [first], [f"2 加 {herbs[1]}"], f"{herbs[0]} 9g、附子 6g", False, 4,
                                   "加附子", api_name="/feedback")
    assert status.startswith("已保存"), status
    [row] = [r for r in feedback_rows(served.store.path) if r["comment"] == "加附子"]
    assert row["session_id"] == session_id and row["rating"] == 4
    assert '"1": "accept"' in row["verdicts"] and '"2": "reject"' in row["verdicts"]
    assert '"dose_g": 9.0' in row["prescription"] and "附子" in row["prescription"]
    saved = served.store.session(session_id)
    assert [s["herb"] for s in saved["steps"]] == herbs and saved["model_sha256"] == served.engine.model.sha256


def test_twenty_concurrent_clients_all_saved(served, symptom_text):
    session_id = recommend(served.client, symptom_text)[-1][1]
    results = [None] * 20

    def save(n):
        client = Client(served.url, verbose=False)
        results[n] = client.predict(session_id, [], [], "麻黄 9g", False, 5, f"client {n}", api_name="/feedback")

    threads = [threading.Thread(target=save, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r and r.startswith("已保存") for r in results), results
    comments = {r["comment"] for r in feedback_rows(served.store.path) if r["session_id"] == session_id}
    assert comments == {f"client {n}" for n in range(20)}


@pytest.mark.parametrize(("text", "expected"), [("", "no symptoms given"), ("qwerty zxcv", "未识别")])
def test_empty_or_garbage_symptoms_get_a_message(served, text, expected):
    page, session_id = recommend(served.client, text)[-1][:2]
    assert expected in page and "rx-step" not in page and session_id == ""


def test_bad_feedback_is_explained_not_saved(served, symptom_text):
    final = recommend(served.client, symptom_text)[-1]
    session_id, step = final[1], f"1 加 {final[4].split('、')[0]}"
    before = len(feedback_rows(served.store.path))
    feedback = served.client.predict
    assert "make a recommendation first" in feedback("", [], [], "麻黄", False, 3, "", api_name="/feedback")
    assert "implausible" in feedback(session_id, [], [], "麻黄 900g", False, 3, "", api_name="/feedback")
    both = feedback(session_id, [step], [step], "麻黄", False, 3, "", api_name="/feedback")
    assert "accepted and rejected" in both
    assert "no session" in feedback("0" * 12, [], [], "麻黄", False, 3, "", api_name="/feedback")
    assert len(feedback_rows(served.store.path)) == before


def test_edits_are_rechecked_with_dose_limits(served):
    page = served.client.predict("附子 60g、半夏 9g", False, api_name="/recheck")
    assert page.count('class="rx-warning rx-severe"') == 2  # 十八反 and the dose
    assert "超过每日上限" in page


def test_user_text_is_escaped_never_rendered(served):
    page = served.client.predict("<img src=x onerror=alert(1)> 附子", False, "", api_name="/check")
    assert "<img" not in page and "&lt;img" in page
    parsed = served.client.predict("恶寒发热 <b>x</b>", api_name="/parse_symptoms")
    assert "恶寒发热" in parsed and "&lt;b&gt;" in parsed and "<b>x" not in parsed


def test_feedback_browse_export_and_delete(served, symptom_text):
    session_id = recommend(served.client, symptom_text)[-1][1]
    served.client.predict(session_id, [], [], "桂枝 6g", False, 2, "to delete", api_name="/feedback")
    rows = served.client.predict("to delete", 0, api_name="/browse_feedback")
    assert [r[2] for r in rows["data"]] == [session_id]
    exported = served.client.predict("to delete", 0, "jsonl", api_name="/export_feedback")
    assert session_id in Path(exported).read_text(encoding="utf-8")
    assert "已删除" in served.client.predict(session_id, api_name="/delete_session")
    assert served.store.session(session_id) is None
    assert not served.client.predict("to delete", 0, api_name="/browse_feedback")["data"]


def test_a_model_that_fails_to_load_leaves_safety_and_knowledge_working(tmp_path, symptom_text):
    corrupt = tmp_path / "model.gguf"
    corrupt.write_bytes(b"GGUF" + b"\0" * 64)
    engine = Engine()
    engine.load(corrupt)
    assert engine.model is None and "模型未能加载" in engine.status()
    app = build_app(engine, FeedbackStore(tmp_path / "rx.sqlite"))
    port = free_port()
    app.launch(prevent_thread_lock=True, quiet=True, **launch_options("127.0.0.1", port))
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        page = recommend(client, symptom_text)[-1][0]
        assert "模型未能加载" in page and "安全核查与药物知识仍可使用" in page
        assert "十八反" in client.predict("附子 半夏", False, "", api_name="/check")
    finally:
        app.close()


def test_the_model_tab_loads_hf_weights_in_8_bits_and_explains_a_refusal(micro_export, tmp_path):
    app = build_app(Engine(), FeedbackStore(tmp_path / "rx.sqlite"))
    port = free_port()
    app.launch(prevent_thread_lock=True, quiet=True, **launch_options("127.0.0.1", port))
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        status, _ = client.predict(str(micro_export / "hf"), "hf", "cpu", "8bit", api_name="/load_model")
        assert "backend hf" in status and "weights 8bit" in status, status
        refused, _ = client.predict(str(micro_export / "model-q4_k_m.gguf"), "auto", "cpu", "4bit",
                                    api_name="/load_model")
        assert "模型未能加载" in refused and "GGUF" in refused, refused
    finally:
        app.close()


def start_launch_py(*args: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "launch.py", "--port", str(port), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
            return proc, port
        except OSError:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.5)
    proc.kill()
    pytest.fail("launch.py did not serve within 120 s")


def test_launch_py_serves_on_loopback_without_outside_assets(tmp_path):
    proc, port = start_launch_py("--db", str(tmp_path / "rx.sqlite"))
    try:
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        assert "rx" in page
        assert not re.search(r"fonts\.googleapis|cdn\.jsdelivr|unpkg\.com", page)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert f"http://127.0.0.1:{port}" in output and "feedback database" in output
    assert f"Loaded: `{DEFAULT_MODEL}`" in output  # the shipped default model, with no --model


def test_kill_9_during_a_burst_of_saves_loses_no_acknowledged_save(micro_export, tmp_path, symptom_text):
    db = tmp_path / "rx.sqlite"
    proc, port = start_launch_py("--model", str(micro_export / "model-f16.gguf"), "--db", str(db))
    acknowledged, lock = [], threading.Lock()
    try:
        url = f"http://127.0.0.1:{port}/"
        session_id = recommend(Client(url, verbose=False), symptom_text)[-1][1]

        def burst(worker):
            client = Client(url, verbose=False)
            for n in range(1000):
                try:
                    status = client.predict(session_id, [], [], "麻黄 9g", False, 3, f"{worker}-{n}",
                                            api_name="/feedback")
                except Exception:  # the server is gone
                    return
                saved = re.search(r"#(\d+)", status)
                with lock:
                    acknowledged.extend([int(saved[1])] if saved else [])

        threads = [threading.Thread(target=burst, args=(w,), daemon=True) for w in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while len(acknowledged) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        for t in threads:
            t.join(timeout=60)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    saved = {r["id"] for r in feedback_rows(db)}
    with lock:
        assert acknowledged and set(acknowledged) <= saved, set(acknowledged) - saved


def test_the_patients_drugs_reach_the_checks_and_the_session(served, symptom_text):
    drugs = ["华法林（warfarin）", "地高辛", "sertralin"]
    page, session_id = recommend(served.client, symptom_text, drugs=drugs)[-1][:2]
    assert "所服西药" in page and "华法林" in page and "sertralin" in page  # the unknown one: "not checked"
    saved = served.store.session(session_id)
    assert saved["drugs"] == ["warfarin", "digoxin"] and saved["unchecked_drugs"] == ["sertralin"]
    assert "华法林（warfarin） 相互作用：出血风险" in served.client.predict("丹参 当归", False, "", ["warfarin"],
                                                                    api_name="/check")
    assert "出血风险" not in served.client.predict("丹参 当归", False, "", [], api_name="/check")
    assert "相互作用：低血钾" in served.client.predict("甘草 6g", False, ["digoxin"], api_name="/recheck")
