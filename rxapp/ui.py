"""The practitioner's web page laid out in Gradio and wired to its actions in `rxapp.page`: symptoms in, a
prescription streamed step by step with its explanations and sourced warnings, the clinician's review saved to the
feedback store; plus the safety checker, the feedback browser and the model tab."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial, wraps

import gradio as gr

from rxapp import page
from rxapp.backends import QUANTIZATIONS
from rxapp.drugs import drug_vocab, interactions
from rxapp.engine import BACKENDS, DEVICES, Engine, model_card
from rxapp.feedback import FeedbackStore
from rxapp.formulas import formulas
from rxapp.page import DECODING, FEEDBACK_COLUMNS, check_prescription, parse_symptoms, recheck
from rxapp.safety import SEVERITIES, rules
from rxapp.stepper import StepperConfig, warm_up
from rxapp.vocab import vocab

DISCLAIMER = ("**rx 是供有资质的中医师使用的处方辅助决策工具，不是诊断。** 所有建议与警示都需由医师本人判断。"
              "  \n*Decision support for a qualified TCM practitioner — not a diagnosis.*")
AGE_GROUPS = ("未填", "儿童 <14", "成人 14–64", "老年 ≥65")
SEXES = ("未填", "女", "男")
# System fonts only: the page must not fetch fonts or scripts from outside this machine.
THEME = gr.themes.Default(font=["system-ui", "PingFang SC", "Noto Sans CJK SC", "sans-serif"],
                          font_mono=["ui-monospace", "monospace"])


def bound(action: Callable, *first) -> Callable:
    """`action` with its engine or store given. Gradio reads the rest of its signature for the endpoint's parameters,
    and would read partial's docstring for its description: it gets none, as before."""
    handler = partial(action, *first)
    handler.__doc__ = None
    return handler


def recommend_outputs(update: page.PageUpdate) -> tuple:
    """A page.PageUpdate as the values of the Recommend button's seven outputs."""
    # two fresh updates: the accept and the reject lists each get their own
    steps = [gr.skip() if update.steps is None else gr.update(choices=update.steps, value=[]) for _ in range(2)]
    rest = [gr.skip() if v is None else v for v in (update.prescription, update.prescription_check, update.save_status)]
    return (update.html, update.session_id, *steps, *rest)


def streamed(recommend: Callable) -> Callable:
    """page.recommend, its engine and store given, as a Gradio generator of output values; `wraps` keeps the
    signature, which Gradio reads for the endpoint's parameters."""
    @wraps(recommend)
    def run(*form):
        for update in recommend(*form):
            yield recommend_outputs(update)

    return run


def medications_field(elem_id: str) -> gr.Dropdown:
    """The patient's Western drugs: searchable among the known drugs and classes, free text accepted (what is not
    recognised is reported as not checked, never dropped)."""
    return gr.Dropdown([d.label for d in drug_vocab().drugs], multiselect=True, filterable=True,
                       allow_custom_value=True, label="正在服用的西药 Western medications（可搜索，可自由输入）",
                       elem_id=elem_id)


def build_app(engine: Engine, store: FeedbackStore) -> gr.Blocks:
    warm_up()
    # the page's actions with this engine and store; Gradio passes them the form's values
    run, load = streamed(bound(page.recommend, engine, store)), bound(page.load_model, engine)
    save, browse, export, delete = (bound(action, store) for action in (
        page.save_feedback, page.browse_feedback, page.export_feedback, page.delete_session))

    with gr.Blocks(title="rx — 中药处方辅助", analytics_enabled=False) as app:
        gr.Markdown("# rx — 中药处方辅助决策\n" + DISCLAIMER)
        with gr.Tab("处方 Recommend"):
            with gr.Row():
                with gr.Column(scale=3):
                    text = gr.Textbox(label="症状（自由文本）Symptoms", placeholder="恶寒发热，头痛，咳嗽", lines=2)
                    picked = gr.Dropdown(vocab().symptoms, multiselect=True, filterable=True,
                                         label="或从症状词表中选择（可搜索）Pick from the vocabulary")
                    recognised = gr.HTML()
                    with gr.Accordion("从初稿或经典方开始 Start from a draft or a classical formula", open=False):
                        formula = gr.Dropdown([f.name for f in formulas()], value=None, filterable=True,
                                              label="经典方 Classical formula（可搜索）", elem_id="rx-formula")
                        start = gr.Textbox(label="或自拟初稿 Or your draft（药名，用顿号或空格分隔）",
                                           placeholder="麻黄、桂枝、杏仁、炙甘草", elem_id="rx-start")
                with gr.Column(scale=2):
                    pregnant = gr.Checkbox(label="孕妇 Pregnant")
                    drugs = medications_field("rx-drugs")
                    age_group = gr.Dropdown(list(AGE_GROUPS), value=AGE_GROUPS[0], label="年龄组 Age group")
                    sex = gr.Radio(list(SEXES), value=SEXES[0], label="性别 Sex")
                    notes = gr.Textbox(label="备注 Notes（仅存于本地数据库）", lines=2)
            with gr.Accordion("设置 Settings", open=False):
                with gr.Row():
                    screen_weight = gr.Slider(0, 10, value=StepperConfig.screen_weight, step=0.5,
                                      label="安全筛查权重 Screen weight（每条配伍/妊娠规则降低的 logit）")
                    max_herbs = gr.Slider(1, StepperConfig.max_herbs, value=20, step=1, label="最多药味 Max herbs",
                                          info="从零开方时，模型自带的上限（见模型卡）更小则以其为准 From nothing, "
                                               "the model's own limit applies where it is lower (see its card)")
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
                           temperature, seed, drugs, start, formula],
                     [output, session_id, accepted, rejected, prescription, prescription_safety, save_status],
                     api_name="recommend", concurrency_id="model", concurrency_limit=1)
            gr.on([prescription.change, pregnant.change, drugs.change], recheck, [prescription, pregnant, drugs],
                  prescription_safety, api_name="recheck")
            save_button.click(save, [session_id, accepted, rejected, prescription, pregnant, rating, comment],
                              save_status, api_name="feedback", concurrency_limit=8)
        with gr.Tab("安全核查 Safety check"):
            herbs = gr.Textbox(label="处方药物（空格或顿号分隔）", placeholder="附子 半夏 甘草")
            with gr.Row():
                check_pregnant = gr.Checkbox(label="孕妇 Pregnant")
                doses = gr.Textbox(label="剂量（可选，克）", placeholder="附子=9, 半夏=6")
                check_drugs = medications_field("rx-check-drugs")
            check = gr.Button("核查", variant="primary")
            result = gr.HTML()
            check.click(check_prescription, [herbs, check_pregnant, doses, check_drugs], result, api_name="check")
            gr.Markdown(f"安全规则：{len(rules().pairs)} 条配伍禁忌，{len(rules().herb_rules)} 组单味药规则，"
                        f"{len(rules().dose_limits)} 条剂量上限，{len(interactions())} 条中药–西药相互作用"
                        "（精选子集，并非完整的相互作用数据库；证据等级见每条警示）；"
                        f"严重程度 {' / '.join(SEVERITIES)}。")
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
                browse, [search, min_rating], table, api_name="browse", api_visibility="undocumented")
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

