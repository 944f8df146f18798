"""The prompt and response format shared by the trainer, the evaluator and the app.

A prompt states the patient, and the draft when there is one to revise:

    症状：恶寒、发热、头痛
    孕妇：否
    初稿：麻黄、桂枝、杏仁、甘草

A response has the paper's three parts. Each prescription line is one step that adds (加) or removes (减) one
vocabulary herb, with a short explanation; the 【方解】 header is the decision to stop:

    【症状分析】
    主症：恶寒、发热、头痛。
    【处方】
    加麻黄：发汗，用于恶寒
    加桂枝：……
    【方解】
    麻黄、桂枝发汗，治恶寒；……

The 方解 is composed from the steps' own claims (`compose_summary`), so it names every prescribed herb once and no
other; the model decides only when to stop.

A draft to revise (a practitioner's list or a classical formula) is named in the prompt and given as the first 加 lines
of the response, as if the model had written them (the state is the list, as in FLAME). The prompt's 初稿 line is how
the model tells a draft, which may hold herbs to remove, from its own steps; it then removes (减麻黄：发汗，非本证所需)
or adds herbs, and stops. Models of format 2 were trained to do so (`REVISION_FORMAT`).

`parse_response` reads any prefix of a response (for streaming and step rewards) and never raises: a line that is
not a valid step is kept and marked invalid, and leaves the herb list unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from rxapp.vocab import vocab

FORMAT_VERSION = 2  # raise on any change a trained model would notice; model files carry it (rxapp/modelinfo.py)
READABLE_FORMATS = (1, 2)  # the app runs models of these formats; 1 only builds prescriptions from nothing
REVISION_FORMAT = 2  # the first format trained on drafts to revise: 减 steps and their reasons
ANALYSIS_HEADER, PRESCRIPTION_HEADER, SUMMARY_HEADER = "【症状分析】", "【处方】", "【方解】"
SECTIONS = ("analysis", "prescription", "summary")
ADD, REMOVE = "加", "减"
ACTIONS = {ADD: "add", REMOVE: "remove"}
EXPLANATION_MARK, ACTION_SEPARATOR, CLAUSE_SEPARATOR = "：", "、", "，"  # 加麻黄：发汗解表、宣肺平喘，主治恶寒
INDICATION, USAGE = "主治", "用于"  # the explanation's claims about a symptom: a KG indication, a training statistic
NO_RECORD = "知识库暂无此药记录"  # an explanation with nothing to say claims nothing
NOT_NEEDED = "非本证所需"  # a removal's reason: the herb's action is not what this presentation needs
DRAFT = "初稿"  # the prompt's line naming the draft to revise
# Words the format itself writes; the domain tokenizer gives each one token.
FORMAT_WORDS = ("症状", "孕妇", "是", "否", "症状分析", "处方", "方解", "主症", INDICATION, USAGE, ADD, REMOVE,
                NO_RECORD, NOT_NEEDED, DRAFT)

STEP_LINE = re.compile(r"^(加|减)\s*([^：:\s]+)\s*(?:[：:]\s*(.*))?$")


@dataclass(frozen=True)
class Claim:
    kind: str  # "effect" (a 功效), "indication" (主治…: a KG fact), "usage" (用于…: a training statistic)
    value: str


def render_explanation(effects: Sequence[str] = (), indication: str | None = None, usage: str | None = None) -> str:
    """<effect、effect>，主治<symptom> | 用于<symptom> — short, because a small model writes it at every step; the
    herb's 性味 and 归经 are shown from the knowledge base beside it."""
    parts = [ACTION_SEPARATOR.join(effects)] if effects else []
    if indication:
        parts.append(f"{INDICATION}{indication}")
    elif usage:
        parts.append(f"{USAGE}{usage}")
    return CLAUSE_SEPARATOR.join(parts) if parts else NO_RECORD


def explanation_claims(explanation: str) -> list[Claim]:
    """The checkable claims of an explanation written in the render_explanation form."""
    claims = []
    for part in explanation.strip().rstrip("。").split(CLAUSE_SEPARATOR):
        if part in (NO_RECORD, NOT_NEEDED) or not part:
            continue
        if part.startswith(INDICATION):
            claims.append(Claim("indication", part.removeprefix(INDICATION)))
        elif part.startswith(USAGE):
            claims.append(Claim("usage", part.removeprefix(USAGE)))
        else:
            claims += [Claim("effect", e) for e in part.split("、") if e]
    return claims


def render_removal(actions: Sequence[str] = ()) -> str:
    """Why a draft's herb goes: its action, which this presentation does not need (<effect>，非本证所需)."""
    return CLAUSE_SEPARATOR.join([*([ACTION_SEPARATOR.join(actions)] if actions else []), NOT_NEEDED])


def render_prompt(symptoms: Sequence[str], pregnant: bool = False, draft: Sequence[str] = ()) -> str:
    drafted = f"{DRAFT}：{'、'.join(draft)}\n" if draft else ""
    return f"症状：{'、'.join(symptoms)}\n孕妇：{'是' if pregnant else '否'}\n{drafted}"


def render_analysis(symptoms: Sequence[str]) -> str:
    """症状分析 of the default format: the presenting symptoms. It follows from the prompt alone, so the first herb
    step always starts at a known position (one forward pass gives the first-herb distribution)."""
    return f"主症：{'、'.join(symptoms)}。"


def render_step(herb: str, explanation: str, action: str = "add") -> str:
    verb = ADD if action == "add" else REMOVE
    return f"{verb}{herb}{EXPLANATION_MARK}{explanation}\n"


def steps_prefix(analysis: str) -> str:
    """The response up to where the first step begins."""
    return f"{ANALYSIS_HEADER}\n{analysis}\n{PRESCRIPTION_HEADER}\n"


def compose_summary(steps: Sequence[tuple[str, str]]) -> str:
    """The 方解 of (herb, explanation) additions, right by construction: every herb named once and no other. The
    herbs added for one symptom share a clause, those citing one action named together, so that no herb is said to
    treat what another was added for (`麻黄、生姜发汗解表，桂枝解肌，共治恶寒发热`); a herb tied to no symptom is
    grouped with the others of its action (`甘草调和诸药`). Clauses follow the order of the steps."""
    clauses: dict[tuple[str, str], dict[str, list[str]]] = {}  # (symptom, "") or ("", action) → action → herbs
    for herb, explanation in steps:
        claims = explanation_claims(explanation)
        symptom = next((c.value for c in claims if c.kind != "effect"), "")
        effect = next((c.value for c in claims if c.kind == "effect"), "" if symptom else f"（{NO_RECORD}）")
        clauses.setdefault((symptom, "") if symptom else ("", effect), {}).setdefault(effect, []).append(herb)
    text = "；".join(_clause(symptom, by_action) for (symptom, _), by_action in clauses.items())
    return text + "。" if text else ""


def _clause(symptom: str, by_action: dict[str, list[str]]) -> str:
    """One clause of the 方解: `陈皮、半夏燥湿化痰，桔梗祛痰，共治咳嗽`, or without a symptom `甘草调和诸药`."""
    text = "，".join("、".join(herbs) + effect for effect, herbs in by_action.items())
    if not symptom:
        return text
    together = sum(map(len, by_action.values())) > 1
    return text + ("，" if any(by_action) else "") + ("共治" if together else "治") + symptom


def revised(moves: Sequence[tuple[str, str, str]]) -> list[tuple[str, str]]:
    """The (herb, explanation) of each herb left after (action, herb, explanation) moves, in the order added."""
    kept: dict[str, str] = {}
    for action, herb, explanation in moves:
        if action == "add":
            kept[herb] = explanation
        else:
            kept.pop(herb)
    return list(kept.items())


def render_moves(analysis: str, moves: Sequence[tuple[str, str, str]]) -> str:
    """A whole response from its analysis and (action, herb, explanation) moves, with the 方解 of what they leave."""
    return (steps_prefix(analysis) + "".join(render_step(h, e, a) for a, h, e in moves)
            + f"{SUMMARY_HEADER}\n{compose_summary(revised(moves))}\n")


def render_response(analysis: str, steps: Sequence[tuple[str, str]]) -> str:
    """A whole response from its analysis and (herb, explanation) additions, with their composed 方解."""
    return render_moves(analysis, [("add", h, e) for h, e in steps])


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of a prompt: wrapped in the chat template when the tokenizer has one (pretrained chat bases),
    as plain text otherwise (the domain model)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=True, return_dict=False)
    return tokenizer.encode(prompt, add_special_tokens=False)


@dataclass(frozen=True)
class Step:
    line: str  # the line as generated, without its newline
    action: str | None  # "add" or "remove"; None when the line is not a step at all
    herb: str | None  # the vocabulary herb named, None when unknown or malformed
    explanation: str
    error: str | None  # why the step is invalid; None for a valid step

    @property
    def valid(self) -> bool:
        return self.error is None


@dataclass
class Response:
    analysis: str = ""
    steps: list[Step] = field(default_factory=list)
    summary: str = ""
    section: str | None = None  # the section the text has reached; None before the first header
    pending: str = ""  # an unfinished last line (streaming), not yet judged
    problems: list[str] = field(default_factory=list)  # structural problems: missing or repeated headers, stray text
    herbs: list[str] = field(default_factory=list)  # the prescription after every valid step, in order

    @property
    def stopped(self) -> bool:
        """The model has decided to stop adding herbs (it reached 【方解】)."""
        return self.section == "summary"

    @property
    def well_formed(self) -> bool:
        """All three sections, in order, with no invalid step and no structural problem."""
        return self.stopped and not self.problems and all(s.valid for s in self.steps) and bool(self.steps)


def judge_step(line: str, current: list[str]) -> Step:
    """One prescription line, judged against the list built so far."""
    match = STEP_LINE.match(line.strip())
    if not match:
        return Step(line, None, None, "", "not a step: expected 加<herb>：<explanation> or 减<herb>：<reason>")
    verb, name, explanation = match.group(1), match.group(2), (match.group(3) or "").strip()
    action = ACTIONS[verb]
    if name not in vocab().herb_id:
        return Step(line, action, None, explanation, f"{name} is not a vocabulary herb")
    if action == "add" and name in current:
        return Step(line, action, name, explanation, f"{name} is already in the prescription")
    if action == "remove" and name not in current:
        return Step(line, action, name, explanation, f"{name} is not in the prescription")
    return Step(line, action, name, explanation, None)


def parse_response(text: str, final: bool = True) -> Response:
    """Parse a whole response or any prefix of one. With final=False an unterminated last line stays pending."""
    response = Response()
    lines = text.split("\n")
    if not final:
        response.pending = lines.pop()
    headers = {ANALYSIS_HEADER: "analysis", PRESCRIPTION_HEADER: "prescription", SUMMARY_HEADER: "summary"}
    seen: list[str] = []
    analysis: list[str] = []
    summary: list[str] = []
    for raw in lines:
        line = raw.strip()
        if line in headers:
            section = headers[line]
            if section in seen or (seen and SECTIONS.index(section) < SECTIONS.index(seen[-1])):
                response.problems.append(f"{line} out of order")
                continue
            if SECTIONS.index(section) != len(seen):
                response.problems.append(f"{line} comes before {SECTIONS[len(seen)]}")
            seen.append(section)
            response.section = section
        elif not line:
            continue
        elif response.section == "analysis":
            analysis.append(line)
        elif response.section == "prescription":
            step = judge_step(line, response.herbs)
            response.steps.append(step)
            if step.valid and step.action == "add":
                response.herbs.append(step.herb)
            elif step.valid:
                response.herbs.remove(step.herb)
        elif response.section == "summary":
            summary.append(line)
        else:
            response.problems.append(f"text before {ANALYSIS_HEADER}: {line[:30]}")
    response.analysis, response.summary = "\n".join(analysis), "\n".join(summary)
    return response
