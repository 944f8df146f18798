"""The web page's actions as plain functions, without Gradio: each takes the engine or the feedback store and the
form's values, and returns (or, for a recommendation, yields) what the page shows. The HTML pieces they build live
here too; every piece of user, model or data text is HTML-escaped before display. `rxapp.ui` lays the page out and
wires its buttons to these functions."""

from __future__ import annotations

import html
import tempfile
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from rxapp.draft import Draft, read_draft
from rxapp.drugs import MedicationInputError
from rxapp.engine import Engine, LoadedModel, model_card
from rxapp.feedback import FeedbackStore, SessionRecord, StoreError, export_records
from rxapp.formulas import FormulaInputError
from rxapp.safety import (
    SEVERITY_WORD,
    DoseError,
    Patient,
    interaction_summary,
    parse_doses,
    parse_prescription,
    rules,
)
from rxapp.stepformat import NO_RECORD, render_analysis
from rxapp.stepper import (
    SAFETY_NOTE,
    STEP_WORDS,
    DraftCheck,
    Recommendation,
    Step,
    StepperConfig,
    unrevised_note,
)
from rxapp.stepper import recommend as recommend_steps
from rxapp.vocab import SEPARATORS, HerbInputError, SymptomInputError, clean_text, split_herb_list, vocab

SEVERITY_COLOUR = {"severe": "#b42318", "warning": "#b54708", "info": "#175cd3"}
DECODING = ("确定性 deterministic", "采样 sampling")
# The feedback table's headers, in the order of browse_feedback's row cells.
FEEDBACK_COLUMNS = ["feedback", "saved (UTC)", "session", "symptoms", "model herbs", "final herbs", "accepted",
                    "rejected", "rating", "comment"]
e = html.escape


def warning_items(warnings: list) -> str:
    items = []
    for w in warnings:
        colour, label = SEVERITY_COLOUR[w.severity], SEVERITY_WORD[w.severity]
        sources = "；".join(e(s.url or s.title) for s in w.sources)
        items.append(f'<li class="rx-warning rx-{w.severity}" style="border-left:4px solid {colour};'
                     f'padding:4px 8px;margin:4px 0;list-style:none"><b style="color:{colour}">[{label}]</b> '
                     f"{e(w.message)}<br><small>来源：{sources or '—'}</small></li>")
    return "<ul style='padding:0'>" + "".join(items) + "</ul>" if items else ""


def warning_html(warnings: list) -> str:
    return warning_items(warnings) or "<p>未发现配伍、妊娠、毒性、剂量或与所列西药的相互作用问题。</p>"


def message(text: str) -> str:
    return f'<p class="rx-message">{e(text)}</p>'


def check_prescription(herbs_text: str, pregnant: bool, doses_text: str, drugs: list[str] | None = None) -> str:
    """Safety check of a typed prescription for a patient who may take Western `drugs`; doses as `附子=9, 半夏=6`."""
    try:
        herbs = split_herb_list(herbs_text or "")
        doses = parse_doses([d for d in SEPARATORS.split(clean_text(doses_text or "")) if d], herbs)
        patient = Patient.from_input(bool(pregnant), drugs or [])
    except (HerbInputError, DoseError, MedicationInputError) as err:
        return message(str(err))
    return warning_html(rules().check_prescription(herbs, patient, doses))


def recheck(prescription_text: str, pregnant: bool, drugs: list[str] | None = None) -> str:
    """The edited prescription (`麻黄 9g、桂枝 6g`) checked again, dose limits and the patient's drugs included."""
    try:
        items = parse_prescription(prescription_text or "")
        patient = Patient.from_input(bool(pregnant), drugs or [])
    except (HerbInputError, DoseError, MedicationInputError) as err:
        return message(str(err))
    if not items:
        return message("处方为空 The prescription is empty.")
    doses = {h: d for h, d in items if d is not None}
    return warning_html(rules().check_prescription([h for h, _ in items], patient, doses))


def parse_symptoms(text: str, picked: list[str] | None = None) -> str:
    try:
        parsed = vocab().parse_symptoms([text or "", *(picked or [])])
    except SymptomInputError as err:
        return message(str(err))
    lines = [f"<p><b>识别的症状：</b>{e('、'.join(parsed.symptoms) or '（无）')}</p>"]
    for fragment in parsed.unrecognised:
        hint = parsed.suggestions.get(fragment)
        lines.append(f"<p>未识别：<code>{e(fragment)}</code>" + (f"（是否指：{e('、'.join(hint))}）" if hint else "")
                     + "</p>")
    return "".join(lines)


STEP_STYLE = {  # a card's style: a draft's herb, the model's addition, the model's removal
    "draft": "border:1px solid #d0d5dd;background:#f9fafb",
    "add": "border:1px solid #d0d5dd",
    "remove": "border:1px dashed #b42318;background:#fef3f2",
}


def step_card(step: Step) -> str:
    facts = step.facts.summary() if step.facts else NO_RECORD
    verb, style = STEP_WORDS[step.action], STEP_STYLE[step.action]
    title = f"{verb} · {e(step.name)}" if step.action == "draft" else f"第 {step.index} 步 · {verb} {e(step.name)}"
    title += SAFETY_NOTE if step.safety else ""
    resolved = "<p style='margin:4px 0'><small>减去此药，解除：</small></p>" if step.action == "remove" and (
        step.warnings) else ""
    return (f'<div class="rx-step" data-action="{step.action}" style="{style};border-radius:8px;padding:8px 12px;'
            'margin:6px 0">'
            f"<b>{title}</b> <small>（模型概率 {step.probability:.2f}）</small>"
            f"<p style='margin:4px 0'>{e(step.explanation)}</p><p style='margin:4px 0'><small>{e(facts)}</small></p>"
            f"{resolved}{warning_items(step.warnings)}</div>")


def draft_panel(draft: Draft, warnings: list) -> str:
    """The draft as read, and its own safety check (shown before the model's first step)."""
    unknown = f"；未识别（未核查）：{e('、'.join(draft.unknown))}" if draft.unknown else ""
    merged = "；".join(f"{e(given)} 按 {e(herb)}" for given, herb in draft.merged)
    return (f"<div class='rx-draft'><h3>初稿 · {e(draft.label)}</h3><p>{e('、'.join(draft.herbs) or '（无可用药名）')}"
            f"{unknown}</p>{f'<p><small>{merged}</small></p>' if merged else ''}<p><b>初稿安全核查</b></p>"
            f"{warning_html(warnings)}</div>")


def formula_line(final: Recommendation) -> str:
    """The classical formula the prescription resembles and how it modifies it, or that none is close."""
    if final.formula is None:
        return "<p class='rx-formula'>类方：未见相近的经典方。</p>"
    return f"<p class='rx-formula'>{e(final.formula.describe())} {e(final.formula.modification())}</p>"


def drugs_line(patient: Patient) -> str:
    """The patient's Western drugs as the screen read them (those not recognised are in the whole check)."""
    if not patient.drugs:
        return ""
    return f"<p class='rx-drugs'><b>所服西药（已纳入安全筛查）：</b>{e('、'.join(d.label for d in patient.drugs))}</p>"


def recommendation_html(analysis: str, cards: list[str], final: Recommendation | None, note: str = "",
                        patient: Patient | None = None, draft: DraftCheck | None = None) -> str:
    patient = final.patient if final else patient or Patient()
    if final and final.draft:
        draft = DraftCheck(final.draft, final.draft_warnings)
    panel = draft_panel(draft.draft, draft.warnings) if draft else ""
    parts = [f"<h3>症状分析</h3><p>{e(analysis)}</p>{drugs_line(patient)}{panel}<h3>处方 · 逐步</h3>", *cards]
    if final is None:
        parts.append("<p><i>生成中…</i></p>")
    else:
        if final.unrevised:
            parts.append(f"<p class='rx-unrevised'>{e(unrevised_note(any(s.safety for s in final.steps)))}</p>")
        kept = [s for s in final.steps if s.action != "remove" and s.herb in final.herbs]
        rows = "".join(f"<tr><td>{i}</td><td>{e(s.name)}</td><td>{e(s.facts.summary(3) if s.facts else '')}"
                       f"</td></tr>" for i, s in enumerate(kept, 1))
        formula = formula_line(final)
        interacting = interaction_summary(final.warnings)
        interacting = f"<p class='rx-interactions'>与所服西药：{e(interacting)}</p>" if interacting else ""
        parts += [f"<h3>方解</h3><p>{e(final.summary or '（未加一味药，无方解）')}</p>{formula}{interacting}",
                  "<h3>处方</h3><table class='rx-prescription'><tr><th>#</th><th>药物</th><th>功效 · 性味</th></tr>"
                  f"{rows}</table>", "<h3>整方安全核查</h3>", warning_html(final.warnings)]
    return "".join(parts) + (message(note) if note else "")


def session_record(final: Recommendation, text: str, unrecognised: list[str], pregnant: bool, age_group: str,
                   sex: str, notes: str, model, cfg: StepperConfig) -> SessionRecord:
    """What the feedback store keeps of one recommendation as shown (`model`: the engine's loaded model)."""
    return SessionRecord(
        text, final.symptoms, unrecognised, pregnant, age_group, sex, notes, str(model.path), model.sha256,
        model.kind, cfg.__dict__, final.analysis, final.text, final.summary,
        [{"index": s.index, "action": s.action, "herb": s.herb, "explanation": s.explanation,
          "probability": s.probability, "warnings": [w.to_dict() for w in s.warnings]} for s in final.steps],
        [w.to_dict() for w in final.warnings], final.steps[-1].elapsed_s if final.steps else 0.0,
        [d.name for d in final.patient.drugs], [text for text, _ in final.patient.unchecked_drugs],
        final.draft.to_dict() if final.draft else None)


@dataclass(frozen=True)
class PageUpdate:
    """One state of the Recommend tab's outputs while a recommendation is made. `None` leaves that output as it is
    (so a half-written review is not wiped by the stream); `steps` sets the choices of both the accept and the reject
    list, with nothing ticked."""

    html: str
    session_id: str = ""
    steps: list[str] | None = None
    prescription: str | None = None
    prescription_check: str | None = None
    save_status: str | None = None


def stepper_config(screen_weight, max_herbs, decoding, temperature, seed) -> StepperConfig:
    """The settings accordion's values; the temperature counts only when sampling is chosen."""
    return StepperConfig(screen_weight=float(screen_weight), max_herbs=int(max_herbs), seed=int(seed or 0),
                         temperature=float(temperature) if decoding == DECODING[1] else 0.0)


def recommend(engine: Engine, store: FeedbackStore, text, picked, pregnant, age_group, sex, notes, screen_weight,
              max_herbs, decoding, temperature, seed, drugs=None, start="", formula=None) -> Iterator[PageUpdate]:
    """The Recommend button: the page after each step, then the finished prescription saved as a session, with the
    review form filled in for it; with a `start` herb list or a `formula`, the model revises that draft. Input that
    names no known symptom, herb or formula, or no loaded model, gives one message."""
    try:
        parsed = vocab().parse_symptoms([text or "", *(picked or [])])
        patient = Patient.from_input(bool(pregnant), drugs or [])
        draft = read_draft(start or "", formula)
    except (SymptomInputError, MedicationInputError, HerbInputError, FormulaInputError) as err:
        yield PageUpdate(message(str(err)))
        return
    if not parsed.symptoms:
        unknown = "、".join(parsed.unrecognised[:5])
        yield PageUpdate(message(f"没有识别出词表中的症状（未识别：{unknown}）。No known symptom."))
        return
    cfg = stepper_config(screen_weight, max_herbs, decoding, temperature, seed)
    with engine.lock:  # held while the steps stream: one recommendation on the model at a time
        if engine.model is None:
            yield PageUpdate(message(engine.status() + "（安全核查与药物知识仍可使用）"))
            return
        model = engine.model
        final, cards = yield from stream_steps(model, parsed.symptoms, patient, cfg, draft)
    if final is not None:
        record = session_record(final, text or "", parsed.unrecognised, bool(pregnant), age_group, sex, notes or "",
                                model, cfg)
        yield saved_update(store, record, final, cards, drugs or [])


def stream_steps(model: LoadedModel, symptoms: list[str], patient: Patient, cfg: StepperConfig,
                 draft: Draft | None = None) -> Generator[PageUpdate, None, tuple[Recommendation | None, list[str]]]:
    """The page after each step (a draft's own check first); returns the finished recommendation (None if the model
    failed) and its step cards."""
    analysis, cards, final, checked = render_analysis(symptoms), [], None, None
    try:
        for event in recommend_steps(model.backend, symptoms, patient, cfg, draft):
            if isinstance(event, Recommendation):
                final = event
                continue
            if isinstance(event, DraftCheck):
                checked = event
            else:
                cards.append(step_card(event))
            yield PageUpdate(recommendation_html(analysis, cards, None, patient=patient, draft=checked))
    except (RuntimeError, ValueError) as err:
        yield PageUpdate(recommendation_html(analysis, cards, None, f"生成失败 Failed: {err}", patient, checked))
        return None, cards
    return final, cards


def saved_update(store: FeedbackStore, record: SessionRecord, final: Recommendation, cards: list[str],
                 drugs: list[str]) -> PageUpdate:
    """The finished page: the session stored (or why not), its steps offered for review, its prescription checked."""
    try:
        session_id, note = store.save_session(record), ""
    except StoreError as err:
        session_id, note = "", f"会话未保存 Session not saved: {err}"
    prescription = "、".join(final.herbs)
    return PageUpdate(recommendation_html(final.analysis, cards, final, note), session_id,
                      [f"{s.index} {STEP_WORDS[s.action]} {s.herb}" for s in final.steps if s.action != "draft"],
                      prescription,
                      recheck(prescription, final.patient.pregnant, drugs), "")


def save_feedback(store: FeedbackStore, session_id, accepted, rejected, prescription_text, pregnant, rating,
                  comment) -> str:
    """The Save button: the clinician's review of a session (steps labelled `3 麻黄`), or why it was not saved."""
    if not (session_id or "").strip():
        return "未保存：请先生成处方 Not saved: make a recommendation first."
    both = set(accepted or []) & set(rejected or [])
    if both:
        return f"未保存：同一步既接受又拒绝 Not saved: accepted and rejected — {'、'.join(sorted(both))}"
    try:
        items = parse_prescription(prescription_text or "")
    except (HerbInputError, DoseError) as err:
        return f"未保存 Not saved: {err}"
    verdicts = {int(label.split()[0]): "accept" for label in accepted or []}
    verdicts |= {int(label.split()[0]): "reject" for label in rejected or []}
    herbs, doses = [h for h, _ in items], {h: d for h, d in items if d is not None}
    try:
        session = store.session(session_id.strip())  # the drugs the recommendation was screened for
    except StoreError as err:
        return f"未保存 Not saved: {err}"
    warnings = rules().check_prescription(herbs, Patient.from_input(
        bool(pregnant), [*session["drugs"], *session["unchecked_drugs"]] if session else []), doses)
    try:
        feedback_id = store.save_feedback(session_id.strip(), verdicts, [{"herb": h, "dose_g": d} for h, d in items],
                                          [w.to_dict() for w in warnings], int(rating) if rating else None,
                                          comment or "")
    except StoreError as err:
        return f"未保存 Not saved: {err}"
    return f"已保存 Saved: feedback #{feedback_id} · session {session_id.strip()} · {len(warnings)} warning(s)"


def _records(store: FeedbackStore, text, min_rating) -> list[dict]:
    return list(store.preference_records(clean_text(text or ""), int(min_rating) if min_rating else None))


def browse_feedback(store: FeedbackStore, text, min_rating) -> list[list]:
    """The feedback table: one row per saved review whose symptoms, herbs or comment contain `text`."""
    return [[r["feedback_id"], r["saved_at"], r["session_id"], "、".join(r["symptoms"]), "、".join(r["model_herbs"]),
             "、".join(r["final_herbs"]), len(r["accepted"]), len(r["rejected"]), r["rating"], r["comment"]]
            for r in _records(store, text, min_rating)]


def export_feedback(store: FeedbackStore, text, min_rating, fmt) -> str:
    """The filtered feedback written as JSONL or CSV to a fresh temporary folder (the page offers it for download);
    returns the file's path."""
    path = Path(tempfile.mkdtemp(prefix="rx-export-")) / f"rx-feedback-{datetime.now():%Y%m%d-%H%M%S}.{fmt}"
    path.write_text(export_records(_records(store, text, min_rating), fmt), encoding="utf-8")
    return str(path)


def delete_session(store: FeedbackStore, session_id) -> str:
    """A session, its steps and its feedback removed (patient privacy), or why not."""
    session_id = (session_id or "").strip()
    try:
        gone = store.delete_session(session_id)
    except StoreError as err:
        return f"未删除 Not deleted: {err}"
    return f"已删除会话 {session_id} 及其反馈 Deleted." if gone else f"没有会话 {session_id!r} No such session."


def load_model(engine: Engine, path, backend, device, quantization) -> tuple[str, str]:
    """The Load button: the engine's status afterwards and the new model's card (empty when none loaded)."""
    engine.load(path, backend, device, quantization)
    return engine.status(), model_card(Path(str(path).strip())) if engine.model else ""
