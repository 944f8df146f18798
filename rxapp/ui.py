"""The practitioner's web page (Gradio). For now: the safety checker and the symptom parser; the step-by-step
recommender joins when the model exists. Every piece of user or data text is HTML-escaped before display."""

from __future__ import annotations

import html

import gradio as gr

from rxapp.safety import SEVERITIES, DoseError, Patient, parse_doses, rules
from rxapp.vocab import SEPARATORS, HerbInputError, SymptomInputError, clean_text, split_herb_list, vocab

DISCLAIMER = ("**rx 是供有资质的中医师使用的处方辅助决策工具，不是诊断。** 所有建议与警示都需由医师本人判断。"
              "  \n*Decision support for a qualified TCM practitioner — not a diagnosis.*")
SEVERITY_STYLE = {"severe": ("#b42318", "严重"), "warning": ("#b54708", "警告"), "info": ("#175cd3", "提示")}
# System fonts only: the page must not fetch fonts or scripts from outside this machine.
THEME = gr.themes.Default(font=["system-ui", "PingFang SC", "Noto Sans CJK SC", "sans-serif"],
                          font_mono=["ui-monospace", "monospace"])


def warning_html(warnings: list) -> str:
    if not warnings:
        return "<p>未发现配伍、妊娠、毒性或剂量问题。</p>"
    items = []
    for w in warnings:
        colour, label = SEVERITY_STYLE[w.severity]
        sources = "；".join(html.escape(s.url or s.title) for s in w.sources)
        items.append(f'<li class="rx-warning rx-{w.severity}" style="border-left:4px solid {colour};'
                     f'padding:4px 8px;margin:4px 0;list-style:none"><b style="color:{colour}">[{label}]</b> '
                     f"{html.escape(w.message)}<br><small>来源：{sources or '—'}</small></li>")
    return "<ul style='padding:0'>" + "".join(items) + "</ul>"


def check_prescription(herbs_text: str, pregnant: bool, doses_text: str) -> str:
    """Safety check of a typed prescription; doses as `附子=9, 半夏=6`."""
    try:
        herbs = split_herb_list(herbs_text or "")
        doses = parse_doses([d for d in SEPARATORS.split(clean_text(doses_text or "")) if d], herbs)
    except (HerbInputError, DoseError) as e:
        return f"<p>{html.escape(str(e))}</p>"
    return warning_html(rules().check_prescription(herbs, Patient(pregnant=bool(pregnant)), doses))


def parse_symptoms(text: str) -> str:
    try:
        parsed = vocab().parse_symptoms(text or "")
    except SymptomInputError as e:
        return f"<p>{html.escape(str(e))}</p>"
    lines = [f"<p><b>识别的症状：</b>{html.escape('、'.join(parsed.symptoms) or '（无）')}</p>"]
    for fragment in parsed.unrecognised:
        hint = parsed.suggestions.get(fragment)
        lines.append(f"<p>未识别：<code>{html.escape(fragment)}</code>" +
                     (f"（是否指：{html.escape('、'.join(hint))}）" if hint else "") + "</p>")
    return "".join(lines)


def build_app() -> gr.Blocks:
    with gr.Blocks(title="rx — 中药处方辅助", analytics_enabled=False) as app:
        gr.Markdown("# rx — 中药处方辅助决策\n" + DISCLAIMER)
        with gr.Tab("安全核查 Safety check"):
            herbs = gr.Textbox(label="处方药物（空格或顿号分隔）", placeholder="附子 半夏 甘草")
            with gr.Row():
                pregnant = gr.Checkbox(label="孕妇 Pregnant")
                doses = gr.Textbox(label="剂量（可选，克）", placeholder="附子=9, 半夏=6")
            check = gr.Button("核查", variant="primary")
            result = gr.HTML()
            check.click(check_prescription, [herbs, pregnant, doses], result, api_name="check")
        with gr.Tab("症状识别 Symptoms"):
            text = gr.Textbox(label="症状（自由文本）", placeholder="恶寒发热，头痛，咳嗽")
            parse = gr.Button("识别")
            parsed = gr.HTML()
            parse.click(parse_symptoms, text, parsed, api_name="parse_symptoms")
        gr.Markdown(f"安全规则：{len(rules().pairs)} 条配伍禁忌，{len(rules().herb_rules)} 组单味药规则，"
                    f"{len(rules().dose_limits)} 条剂量上限；严重程度 {' / '.join(SEVERITIES)}。")
    return app


def launch_options(host: str, port: int) -> dict:
    """Private by default: local address, no share link, no run history, no SSR/MCP, no outside assets."""
    return dict(server_name=host, server_port=port, share=False, ssr_mode=False, mcp_server=False,
                run_history=False, theme=THEME, footer_links=[])
