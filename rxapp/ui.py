"""The practitioner's web page (Gradio): symptoms in, a prescription streamed step by step with its explanations and
sourced warnings, the clinician's review saved to the feedback store; plus the safety checker, the feedback browser
and the model tab. Every piece of user, model or data text is HTML-escaped before display."""

from __future__ import annotations

import html
import tempfile
from datetime import datetime
from pathlib import Path

import gradio as gr

from rxapp.backends import QUANTIZATIONS
from rxapp.engine import BACKENDS, DEVICES, Engine, model_card
from rxapp.feedback import FeedbackStore, SessionRecord, StoreError, export_records
from rxapp.safety import SEVERITIES, DoseError, Patient, parse_doses, parse_prescription, rules
from rxapp.stepformat import render_analysis
from rxapp.stepper import Recommendation, Step, StepperConfig, recommend, warm_up
from rxapp.vocab import SEPARATORS, HerbInputError, SymptomInputError, clean_text, split_herb_list, vocab

DISCLAIMER = ("**rx 是供有资质的中医师使用的处方辅助决策工具，不是诊断。** 所有建议与警示都需由医师本人判断。"
              "  \n*Decision support for a qualified TCM practitioner — not a diagnosis.*")
SEVERITY_STYLE = {"severe": ("#b42318", "严重"), "warning": ("#b54708", "警告"), "info": ("#175cd3", "提示")}
AGE_GROUPS = ("未填", "儿童 <14", "成人 14–64", "老年 ≥65")
SEXES = ("未填", "女", "男")
DECODING = ("确定性 deterministic", "采样 sampling")
FEEDBACK_COLUMNS = ["feedback", "saved (UTC)", "session", "symptoms", "model herbs", "final herbs", "accepted",
                    "rejected", "rating", "comment"]
# System fonts only: the page must not fetch fonts or scripts from outside this machine.
THEME = gr.themes.Default(font=["system-ui", "PingFang SC", "Noto Sans CJK SC", "sans-serif"],
                          font_mono=["ui-monospace", "monospace"])
e = html.escape


def warning_items(warnings: list) -> str:
    items = []
    for w in warnings:
        colour, label = SEVERITY_STYLE[w.severity]
        sources = "；".join(e(s.url or s.title) for s in w.sources)
        items.append(f'<li class="rx-warning rx-{w.severity}" style="border-left:4px solid {colour};'
                     f'padding:4px 8px;margin:4px 0;list-style:none"><b style="color:{colour}">[{label}]</b> '
                     f"{e(w.message)}<br><small>来源：{sources or '—'}</small></li>")
    return "<ul style='padding:0'>" + "".join(items) + "</ul>" if items else ""


def warning_html(warnings: list) -> str:
    return warning_items(warnings) or "<p>未发现配伍、妊娠、毒性或剂量问题。</p>"


def message(text: str) -> str:
    return f'<p class="rx-message">{e(text)}</p>'


def check_prescription(herbs_text: str, pregnant: bool, doses_text: str) -> str:
    """Safety check of a typed prescription; doses as `附子=9, 半夏=6`."""
    try:
        herbs = split_herb_list(herbs_text or "")
        doses = parse_doses([d for d in SEPARATORS.split(clean_text(doses_text or "")) if d], herbs)
    except (HerbInputError, DoseError) as err:
        return message(str(err))
    return warning_html(rules().check_prescription(herbs, Patient(pregnant=bool(pregnant)), doses))


def recheck(prescription_text: str, pregnant: bool) -> str:
    """The edited prescription (`麻黄 9g、桂枝 6g`) checked again, dose limits included."""
    try:
        items = parse_prescription(prescription_text or "")
    except (HerbInputError, DoseError) as err:
        return message(str(err))
    if not items:
        return message("处方为空 The prescription is empty.")
    doses = {h: d for h, d in items if d is not None}
    return warning_html(rules().check_prescription([h for h, _ in items], Patient(pregnant=bool(pregnant)), doses))


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


def step_card(step: Step) -> str:
    facts = step.facts.summary() if step.facts else "知识库暂无此药记录"
    return (f'<div class="rx-step" style="border:1px solid #d0d5dd;border-radius:8px;padding:8px 12px;margin:6px 0">'
            f"<b>第 {step.index} 步 · 加 {e(step.herb)}</b> <small>（模型概率 {step.probability:.2f}）</small>"
            f"<p style='margin:4px 0'>{e(step.explanation)}</p><p style='margin:4px 0'><small>{e(facts)}</small></p>"
            f"{warning_items(step.warnings)}</div>")


def recommendation_html(analysis: str, cards: list[str], final: Recommendation | None, note: str = "") -> str:
    parts = [f"<h3>症状分析</h3><p>{e(analysis)}</p><h3>处方 · 逐步</h3>", *cards]
    if final is None:
        parts.append("<p><i>生成中…</i></p>")
    else:
        rows = "".join(f"<tr><td>{s.index}</td><td>{e(s.herb)}</td><td>{e(s.facts.summary(3) if s.facts else '')}"
                       f"</td></tr>" for s in final.steps)
        parts += [f"<h3>方解</h3><p>{e(final.summary or '（模型未写出方解）')}</p>",
                  "<h3>处方</h3><table class='rx-prescription'><tr><th>#</th><th>药物</th><th>功效 · 性味</th></tr>"
                  f"{rows}</table>", "<h3>整方安全核查</h3>", warning_html(final.warnings)]
    return "".join(parts) + (message(note) if note else "")


def session_record(final: Recommendation, text: str, unrecognised: list[str], pregnant: bool, age_group: str,
                   sex: str, notes: str, model, cfg: StepperConfig) -> SessionRecord:
    """What the feedback store keeps of one recommendation as shown (`model`: the engine's loaded model)."""
    return SessionRecord(
        text, final.symptoms, unrecognised, pregnant, age_group, sex, notes, str(model.path), model.sha256,
        model.kind, cfg.__dict__, final.analysis, final.text, final.summary,
        [{"index": s.index, "herb": s.herb, "explanation": s.explanation, "probability": s.probability,
          "warnings": [w.to_dict() for w in s.warnings]} for s in final.steps],
        [w.to_dict() for w in final.warnings], final.steps[-1].elapsed_s if final.steps else 0.0)


def build_app(engine: Engine, store: FeedbackStore) -> gr.Blocks:
    warm_up()

    def run(text, picked, pregnant, age_group, sex, notes, screen_weight, max_herbs, decoding, temperature, seed):
        skip = (gr.skip(),) * 5
        try:
            parsed = vocab().parse_symptoms([text or "", *(picked or [])])
        except SymptomInputError as err:
            yield message(str(err)), "", *skip
            return
        if not parsed.symptoms:
            unknown = "、".join(parsed.unrecognised[:5])
            yield message(f"没有识别出词表中的症状（未识别：{unknown}）。No known symptom."), "", *skip
            return
        cfg = StepperConfig(screen_weight=float(screen_weight), max_herbs=int(max_herbs), seed=int(seed or 0),
                            temperature=float(temperature) if decoding == DECODING[1] else 0.0)
        with engine.lock:
            if engine.model is None:
                yield message(engine.status() + "（安全核查与药物知识仍可使用）"), "", *skip
                return
            model, cards, analysis = engine.model, [], render_analysis(parsed.symptoms)
            try:
                for event in recommend(model.backend, parsed.symptoms, bool(pregnant), cfg):
                    if isinstance(event, Step):
                        cards.append(step_card(event))
                        yield recommendation_html(analysis, cards, None), "", *skip
                    else:
                        final = event
            except (RuntimeError, ValueError) as err:
                yield recommendation_html(analysis, cards, None, f"生成失败 Failed: {err}"), "", *skip
                return
        record = session_record(final, text or "", parsed.unrecognised, bool(pregnant), age_group, sex, notes or "",
                                model, cfg)
        try:
            session_id, note = store.save_session(record), ""
        except StoreError as err:
            session_id, note = "", f"会话未保存 Session not saved: {err}"
        labels = [f"{s.index} {s.herb}" for s in final.steps]
        prescription = "、".join(final.herbs)
        yield (recommendation_html(final.analysis, cards, final, note), session_id,
               gr.update(choices=labels, value=[]), gr.update(choices=labels, value=[]), prescription,
               recheck(prescription, pregnant), "")

    def save(session_id, accepted, rejected, prescription_text, pregnant, rating, comment):
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
        warnings = rules().check_prescription(herbs, Patient(pregnant=bool(pregnant)), doses)
        try:
            feedback_id = store.save_feedback(session_id.strip(), verdicts,
                                              [{"herb": h, "dose_g": d} for h, d in items],
                                              [w.to_dict() for w in warnings],
                                              int(rating) if rating else None, comment or "")
        except StoreError as err:
            return f"未保存 Not saved: {err}"
        return f"已保存 Saved: feedback #{feedback_id} · session {session_id.strip()} · {len(warnings)} warning(s)"

    def browse(text, min_rating):
        records = list(store.preference_records(clean_text(text or ""), int(min_rating) if min_rating else None))
        return [[r["feedback_id"], r["saved_at"], r["session_id"], "、".join(r["symptoms"]),
                 "、".join(r["model_herbs"]), "、".join(r["final_herbs"]), len(r["accepted"]), len(r["rejected"]),
                 r["rating"], r["comment"]] for r in records]

    def export(text, min_rating, fmt):
        records = list(store.preference_records(clean_text(text or ""), int(min_rating) if min_rating else None))
        path = Path(tempfile.mkdtemp(prefix="rx-export-")) / f"rx-feedback-{datetime.now():%Y%m%d-%H%M%S}.{fmt}"
        path.write_text(export_records(records, fmt), encoding="utf-8")
        return str(path)

    def delete(session_id):
        session_id = (session_id or "").strip()
        try:
            gone = store.delete_session(session_id)
        except StoreError as err:
            return f"未删除 Not deleted: {err}"
        return f"已删除会话 {session_id} 及其反馈 Deleted." if gone else f"没有会话 {session_id!r} No such session."

    def load(path, backend, device, quantization):
        engine.load(path, backend, device, quantization)
        return engine.status(), model_card(Path(str(path).strip())) if engine.model else ""

    with gr.Blocks(title="rx — 中药处方辅助", analytics_enabled=False) as app:
        gr.Markdown("# rx — 中药处方辅助决策\n" + DISCLAIMER)
        with gr.Tab("处方 Recommend"):
            with gr.Row():
                with gr.Column(scale=3):
                    text = gr.Textbox(label="症状（自由文本）Symptoms", placeholder="恶寒发热，头痛，咳嗽", lines=2)
                    picked = gr.Dropdown(vocab().symptoms, multiselect=True, filterable=True,
                                         label="或从症状词表中选择（可搜索）Pick from the vocabulary")
                    recognised = gr.HTML()
                with gr.Column(scale=2):
                    pregnant = gr.Checkbox(label="孕妇 Pregnant")
                    age_group = gr.Dropdown(list(AGE_GROUPS), value=AGE_GROUPS[0], label="年龄组 Age group")
                    sex = gr.Radio(list(SEXES), value=SEXES[0], label="性别 Sex")
                    notes = gr.Textbox(label="备注 Notes（仅存于本地数据库）", lines=2)
            with gr.Accordion("设置 Settings", open=False):
                with gr.Row():
                    screen_weight = gr.Slider(0, 10, value=StepperConfig.screen_weight, step=0.5,
                                      label="安全筛查权重 Screen weight（每条配伍/妊娠规则降低的 logit）")
                    max_herbs = gr.Slider(1, StepperConfig.max_herbs, value=20, step=1, label="最多药味 Max herbs")
                with gr.Row():
                    decoding = gr.Radio(list(DECODING), value=DECODING[0], label="解码 Decoding")
                    temperature = gr.Slider(0.1, 1.5, value=0.7, step=0.1, label="温度 Temperature（采样时）")
                    seed = gr.Number(value=0, precision=0, label="随机种子 Seed")
            go = gr.Button("生成处方 Recommend", variant="primary")
            output = gr.HTML(elem_id="rx-output")
            session_id = gr.Textbox(label="会话编号 Session", interactive=False, elem_id="rx-session")
            with gr.Group():
                gr.Markdown("### 审阅 Review")
                accepted = gr.CheckboxGroup([], label="接受的步骤 Accept", elem_id="rx-accept")
                rejected = gr.CheckboxGroup([], label="拒绝的步骤 Reject", elem_id="rx-reject")
                prescription = gr.Textbox(label="最终处方（可编辑：药名 剂量g，用顿号分隔）Final prescription",
                                          placeholder="麻黄 9g、桂枝 6g、甘草 3g", elem_id="rx-prescription")
                prescription_safety = gr.HTML(elem_id="rx-prescription-safety")
                with gr.Row():
                    rating = gr.Radio([1, 2, 3, 4, 5], label="评分 Rating", elem_id="rx-rating")
                    comment = gr.Textbox(label="评语 Comment")
                save_button = gr.Button("保存反馈 Save", elem_id="rx-save")
                save_status = gr.Markdown(elem_id="rx-save-status")
            gr.on([text.change, picked.change], parse_symptoms, [text, picked], recognised, api_name="recognise",
                  api_visibility="undocumented")
            go.click(run, [text, picked, pregnant, age_group, sex, notes, screen_weight, max_herbs, decoding,
                           temperature, seed],
                     [output, session_id, accepted, rejected, prescription, prescription_safety, save_status],
                     api_name="recommend", concurrency_id="model", concurrency_limit=1)
            gr.on([prescription.change, pregnant.change], recheck, [prescription, pregnant], prescription_safety,
                  api_name="recheck")
            save_button.click(save, [session_id, accepted, rejected, prescription, pregnant, rating, comment],
                              save_status, api_name="feedback", concurrency_limit=8)
        with gr.Tab("安全核查 Safety check"):
            herbs = gr.Textbox(label="处方药物（空格或顿号分隔）", placeholder="附子 半夏 甘草")
            with gr.Row():
                check_pregnant = gr.Checkbox(label="孕妇 Pregnant")
                doses = gr.Textbox(label="剂量（可选，克）", placeholder="附子=9, 半夏=6")
            check = gr.Button("核查", variant="primary")
            result = gr.HTML()
            check.click(check_prescription, [herbs, check_pregnant, doses], result, api_name="check")
            gr.Markdown(f"安全规则：{len(rules().pairs)} 条配伍禁忌，{len(rules().herb_rules)} 组单味药规则，"
                        f"{len(rules().dose_limits)} 条剂量上限；严重程度 {' / '.join(SEVERITIES)}。")
        with gr.Tab("症状识别 Symptoms"):
            symptom_text = gr.Textbox(label="症状（自由文本）", placeholder="恶寒发热，头痛，咳嗽")
            parse = gr.Button("识别")
            parsed = gr.HTML()
            parse.click(parse_symptoms, symptom_text, parsed, api_name="parse_symptoms")
        with gr.Tab("反馈 Feedback"):
            with gr.Row():
                search = gr.Textbox(label="筛选：症状、药物或评语包含 Filter")
                min_rating = gr.Dropdown([0, 1, 2, 3, 4, 5], value=0, label="最低评分 Min rating (0: all)")
                refresh = gr.Button("刷新 Refresh")
            table = gr.Dataframe(headers=FEEDBACK_COLUMNS, interactive=False, wrap=True)
            with gr.Row():
                fmt = gr.Radio(["jsonl", "csv"], value="jsonl", label="导出格式 Export format")
                export_button = gr.Button("导出 Export")
                exported = gr.File(label="导出文件 (pipeline reads the JSONL)")
            with gr.Row():
                delete_id = gr.Textbox(label="删除会话（患者隐私）Delete session id")
                delete_button = gr.Button("删除 Delete", variant="stop")
                delete_status = gr.Markdown()
            refresh.click(browse, [search, min_rating], table, api_name="browse_feedback")
            export_button.click(export, [search, min_rating, fmt], exported, api_name="export_feedback")
            delete_button.click(delete, delete_id, delete_status, api_name="delete_session").then(
                browse, [search, min_rating], table, api_visibility="undocumented")
        with gr.Tab("模型 Model"):
            gr.Markdown(DISCLAIMER)
            path = gr.Textbox(value=str(engine.model.path) if engine.model else "", label="模型 GGUF 文件或 HF 文件夹")
            with gr.Row():
                backend = gr.Dropdown(list(BACKENDS), value="auto", label="后端 Backend")
                device = gr.Dropdown(list(DEVICES), value="auto", label="设备 Device")
                quantization = gr.Dropdown(list(QUANTIZATIONS), value="none", label="HF 权重 Weights (bitsandbytes)")
                load_button = gr.Button("加载 Load")
            status = gr.Markdown(engine.status())
            card = gr.Markdown(model_card(engine.model.path) if engine.model else "")
            load_button.click(load, [path, backend, device, quantization], [status, card], api_name="load_model",
                              concurrency_id="model", concurrency_limit=1)
            gr.Markdown(f"反馈数据库 Feedback database: `{store.path}`")
    return app


def launch_options(host: str, port: int, auth: tuple[str, str] | None = None) -> dict:
    """Private by default: local address, no share link, no run history, no SSR/MCP, no outside assets."""
    return dict(server_name=host, server_port=port, share=False, ssr_mode=False, mcp_server=False,
                run_history=False, theme=THEME, footer_links=[], auth=auth)

