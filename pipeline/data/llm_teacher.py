"""The OpenAI-compatible teacher: any chat-completions endpoint (GPT-4o as in the paper, or a local server) writes
the 症状分析—处方—方解 response for a record. Every answer is validated against the record: kept when its herbs are
the record's, repaired when most are (wrong herbs dropped, missing ones explained by the knowledge teacher),
rejected otherwise. Results go to a JSONL cache, one line per record, so an interrupted run resumes."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pipeline.config import TeacherConfig
from pipeline.data.records import Record
from pipeline.data.teacher import TrainStats, explain, teach
from pipeline.runfolder import read_jsonl
from rxapp.stepformat import parse_response, render_prompt, render_response
from rxapp.vocab import vocab

SYSTEM_PROMPT = """你是一位中医处方专家。根据患者症状和医生已开出的处方，用下面的格式解释这张处方，不要增减药物。
格式（三个部分，标题各占一行）：
【症状分析】
主症：……（分析症状）
【处方】
加<药名>：<该药功效>，主治<与本患者相关的症状>
（每味药一行，只写处方里的药，药名用处方中的写法）
【方解】
<各药配伍作用与治法>
示例：
{example}"""
RETRYABLE_HTTP = {408, 409, 425, 429, 500, 502, 503, 504}


class TeacherError(RuntimeError):
    """The endpoint cannot be used (unreachable after retries, refused the key, or answered nonsense)."""


@dataclass
class Endpoint:
    url: str  # base URL, e.g. http://127.0.0.1:8000/v1 or https://api.openai.com/v1
    model: str = "gpt-4o"
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this variable, never from a file or flag
    requests_per_minute: float = 60.0
    timeout_s: float = 60.0
    retries: int = 3
    max_tokens: int = 1024


def teacher_endpoint(teacher: TeacherConfig) -> Endpoint | None:
    """The endpoint a config distills with, or None for the knowledge teacher."""
    if teacher.kind == "knowledge":
        return None
    if teacher.kind != "openai" or not teacher.url:
        raise ValueError(f"teacher: kind must be knowledge, or openai with a url (got {teacher.kind!r}, "
                         f"{teacher.url!r})")
    return Endpoint(teacher.url, teacher.model, requests_per_minute=teacher.requests_per_minute)


def messages_for(record: Record, example: dict) -> list[dict[str, str]]:
    user = render_prompt(record.symptoms) + "处方：" + "、".join(record.herbs)
    return [{"role": "system", "content": SYSTEM_PROMPT.format(example=example["response"])},
            {"role": "user", "content": user}]


def chat(endpoint: Endpoint, messages: list[dict[str, str]]) -> str:
    """One chat completion (temperature 0), retried with backoff on timeouts and retryable HTTP errors."""
    body = json.dumps({"model": endpoint.model, "messages": messages, "temperature": 0,
                       "max_tokens": endpoint.max_tokens}).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    if os.environ.get(endpoint.api_key_env):
        headers["Authorization"] = f"Bearer {os.environ[endpoint.api_key_env]}"
    request = urllib.request.Request(endpoint.url.rstrip("/") + "/chat/completions", body, headers)
    problem = ""
    for attempt in range(endpoint.retries + 1):
        if attempt:
            time.sleep(min(2.0**attempt, 30.0))
        try:
            with urllib.request.urlopen(request, timeout=endpoint.timeout_s) as reply:
                answer = json.loads(reply.read().decode("utf-8"))
            return answer["choices"][0]["message"]["content"] or ""
        except urllib.error.HTTPError as e:
            problem = f"HTTP {e.code} {e.reason}"
            if e.code not in RETRYABLE_HTTP:
                break
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            problem = f"{getattr(e, 'reason', e)}"
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as e:
            raise TeacherError(f"{endpoint.url} answered something that is not a chat completion ({e})") from e
    raise TeacherError(f"{endpoint.url}: {problem} (after {endpoint.retries + 1} attempts)")


def validate(text: str, record: Record, stats: TrainStats) -> dict:
    """The teacher's answer checked against the record: status ok, repaired or rejected, with the response to
    train on (herbs exactly the record's) unless rejected."""
    parsed = parse_response(text)
    wanted = set(record.herbs)
    steps: dict[str, str] = {}
    for step in parsed.steps:
        name = step.line.strip()[1:].split("：")[0].split(":")[0].strip() if step.action else ""
        herb = step.herb or (vocab().resolve_herb(name).herb if name else None)
        if herb in wanted and herb not in steps:
            steps[herb] = step.explanation
    if not parsed.analysis or len(steps) * 2 < len(wanted):
        reason = "no 症状分析" if not parsed.analysis else f"only {len(steps)} of {len(wanted)} herbs explained"
        return {"status": "rejected", "reason": reason}
    missing = [h for h in stats.order(record.symptoms, record.herbs) if h not in steps]
    ordered = [*steps, *missing]
    response = render_response(parsed.analysis, [(h, steps.get(h) or explain(h, record.symptoms, stats))
                                                 for h in ordered])
    exact = not missing and len(steps) == len(parsed.steps) and parsed.well_formed
    return {"status": "ok" if exact else "repaired", "response": response, "herbs": ordered,
            "reason": "" if exact else f"{len(missing)} herbs added, {len(parsed.steps) - len(steps)} steps dropped"}


def distill_with_llm(records: Sequence[Record], endpoint: Endpoint, cache: Path, stats: TrainStats,
                     clock: Callable[[], float] = time.monotonic) -> dict[str, int]:
    """Ask the endpoint about every record not yet in `cache` (JSONL), at most `requests_per_minute`; returns
    counts by status and the number of requests made."""
    done = {line["id"] for line in read_jsonl(cache)} if cache.exists() else set()
    example = teach(records[0], stats)  # the format shown to the teacher, written by the knowledge teacher
    interval = 60.0 / endpoint.requests_per_minute
    counts = {"ok": 0, "repaired": 0, "rejected": 0, "cached": len(done), "requests": 0}
    last = -interval
    cache.parent.mkdir(parents=True, exist_ok=True)
    with cache.open("a", encoding="utf-8") as out:
        for record in tqdm([r for r in records if r.id not in done], desc="llm teacher", unit="rx", disable=None):
            time.sleep(max(0.0, last + interval - clock()))
            last = clock()
            text = chat(endpoint, messages_for(record, example))
            counts["requests"] += 1
            result = validate(text, record, stats)
            counts[result["status"]] += 1
            line = {"id": record.id, "symptoms": list(record.symptoms), "prompt": render_prompt(record.symptoms),
                    "teacher": endpoint.model, "raw": text, **result}
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
            out.flush()  # each answer paid for is kept, even if the run stops at the next record
    return counts
