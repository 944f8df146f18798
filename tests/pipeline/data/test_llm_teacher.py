"""The OpenAI-compatible teacher against a real server: llama-cpp-python's server on the micro model's GGUF (its
chat template hands the model the prompt it was trained on). Answers are validated, cached and resumed."""

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from transformers import AutoTokenizer

from pipeline.data.llm_teacher import validate
from pipeline.data.records import Record, load_split
from pipeline.data.teacher import TrainStats, teach
from pipeline.release.export import write_gguf
from rxapp.stepformat import parse_response

# the served model was trained on the symptoms prompt alone, so the template drops the teacher's herb list
TEMPLATE = "{{ messages[-1]['content'].split('处方：')[0] }}"
RECORDS = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(micro_export, tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    shutil.copytree(micro_export / "hf", folder / "hf")
    tokenizer = AutoTokenizer.from_pretrained(folder / "hf")
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(folder / "hf")
    gguf = write_gguf(folder / "hf", folder / "served.gguf")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host",
                                "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--n_threads", "1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(url + "/models", timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("llama_cpp.server did not start")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def stats():
    return TrainStats.from_records(load_split("train"))


def test_distill_through_a_local_server_validates_caches_and_resumes(server, cli, tmp_path):
    args = ("-m", "pipeline", "distill", "--split", "validation", "--out", str(tmp_path), "--teacher-url", server,
            "--teacher-model", "micro", "--rpm", "600", "--limit", str(RECORDS))
    started = time.monotonic()
    first = cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert time.monotonic() - started >= (RECORDS - 1) * 0.1  # 600 requests per minute at most
    assert '"requests": 6' in first.stderr

    records = {r.id: r for r in load_split("validation", "clean")}  # what distillation teaches
    cached = [json.loads(line) for line in (tmp_path / "llm-validation.jsonl").read_text().splitlines()]
    assert [c["id"] for c in cached] == list(records)[:RECORDS] and all(c["raw"] for c in cached)
    for c in cached:
        assert c["status"] in {"ok", "repaired", "rejected"}
        if c["status"] == "rejected":
            assert c["reason"]
        else:  # what is kept trains on exactly the record's herbs
            assert parse_response(c["response"]).well_formed
            assert sorted(c["herbs"]) == sorted(records[c["id"]].herbs)

    examples = [json.loads(line) for line in (tmp_path / "validation.jsonl").read_text().splitlines()]
    assert len(examples) == len(records)  # the knowledge teacher covers the rest
    assert all(sorted(e["herbs"]) == sorted(records[e["id"]].herbs) for e in examples)

    again = cli(*args)
    assert again.returncode == 0 and '"requests": 0' in again.stderr  # resumed from the cache, nothing re-asked


def test_an_unreachable_endpoint_gives_one_clear_line(cli, tmp_path):
    result = cli("-m", "pipeline", "distill", "--split", "validation", "--out", str(tmp_path), "--teacher-url",
                 f"http://127.0.0.1:{free_port()}/v1", "--limit", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: http://127.0.0.1:")


def record(herbs: list[str]) -> Record:
    return Record("t1", ("咳嗽", "恶寒"), tuple(herbs))


def test_validation_keeps_repairs_or_rejects(stats):
    exact = teach(record(["麻黄", "杏仁", "甘草"]), stats)["response"]
    assert validate(exact, record(["麻黄", "杏仁", "甘草"]), stats)["status"] == "ok"

    # an alias (炙甘草 → 甘草 family), an extra herb and a missing herb: repaired to exactly the record's herbs
    text = exact.replace("加甘草", "加炙甘草").replace("【方解】", "加人参：补气\n【方解】")
    repaired = validate(text, record(["麻黄", "杏仁", "甘草", "桔梗"]), stats)
    assert repaired["status"] == "repaired" and sorted(repaired["herbs"]) == sorted(["麻黄", "杏仁", "甘草", "桔梗"])
    assert parse_response(repaired["response"]).well_formed

    assert validate("我不知道", record(["麻黄"]), stats)["status"] == "rejected"
    other = validate(exact, record(["人参", "黄芪", "白术", "茯苓"]), stats)
    assert other["status"] == "rejected" and "0 of 4" in other["reason"]
