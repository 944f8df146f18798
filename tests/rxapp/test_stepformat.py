from rxapp.decoding import FormatTokens
from rxapp.stepformat import (
    NO_RECORD,
    NOT_NEEDED,
    PRESCRIPTION_HEADER,
    SUMMARY_HEADER,
    Claim,
    compose_summary,
    explanation_claims,
    parse_response,
    render_explanation,
    render_moves,
    render_prompt,
    render_removal,
    render_response,
    revised,
)

RESPONSE = render_response("主症：恶寒。", [("麻黄", "能发汗。"), ("桂枝", "能解肌。")])


def test_round_trip():
    r = parse_response(RESPONSE)
    assert r.well_formed and r.herbs == ["麻黄", "桂枝"]
    assert (r.analysis, r.summary) == ("主症：恶寒。", "麻黄能发汗；桂枝能解肌。")
    steps = [(s.action, s.herb, s.explanation) for s in r.steps]
    assert steps == [("add", "麻黄", "能发汗。"), ("add", "桂枝", "能解肌。")]
    assert render_prompt(["恶寒", "头痛"], pregnant=True) == "症状：恶寒、头痛\n孕妇：是\n"
    # a draft to revise is named in the prompt: the model's only sign that the first 加 lines may hold herbs to remove
    assert render_prompt(["恶寒"], draft=["麻黄", "桂枝"]) == "症状：恶寒\n孕妇：否\n初稿：麻黄、桂枝\n"


def test_every_prefix_parses_and_the_list_only_grows_along_it():
    previous = []
    for end in range(len(RESPONSE) + 1):
        r = parse_response(RESPONSE[:end], final=False)
        assert r.herbs[: len(previous)] == previous
        assert not r.problems and all(s.valid for s in r.steps)
        previous = r.herbs
    assert previous == ["麻黄", "桂枝"]


def test_unfinished_last_line_is_pending_not_judged():
    r = parse_response(f"【症状分析】\nx\n{PRESCRIPTION_HEADER}\n加麻", final=False)
    assert r.steps == [] and r.pending == "加麻" and r.section == "prescription" and not r.stopped


def test_invalid_lines_are_detected_and_leave_the_list_unchanged():
    text = (f"【症状分析】\nx\n{PRESCRIPTION_HEADER}\n加麻黄：a\n加麻黄：b\n减桂枝：c\n加鬼药：d\n随便写写\n减麻黄：e\n"
            f"加甘草\n{SUMMARY_HEADER}\nok\n")
    r = parse_response(text)
    assert [s.valid for s in r.steps] == [True, False, False, False, False, True, True]
    assert r.steps[3].error == "鬼药 is not a vocabulary herb" and r.steps[4].action is None
    assert r.herbs == ["甘草"] and r.stopped and not r.well_formed


def test_structural_problems_are_reported():
    assert parse_response(f"前言\n{SUMMARY_HEADER}\nx\n").problems
    assert parse_response(f"【症状分析】\na\n{SUMMARY_HEADER}\nb\n{PRESCRIPTION_HEADER}\n").problems
    assert not parse_response("").steps and parse_response("").section is None


def test_explanation_claims_round_trip():
    text = render_explanation(["发汗", "平喘"], None, "恶寒")
    assert text == "发汗、平喘，用于恶寒"
    assert explanation_claims(text) == [Claim("effect", "发汗"), Claim("effect", "平喘"), Claim("usage", "恶寒")]
    assert explanation_claims(render_explanation(["止咳"], "咳嗽", "恶寒")) == [Claim("effect", "止咳"),
                                                                              Claim("indication", "咳嗽")]
    assert render_explanation() == NO_RECORD and explanation_claims(NO_RECORD) == []


def test_the_composed_summary_names_every_herb_once_grouped_by_symptom_then_action():
    steps = [("麻黄", render_explanation(["发汗解表"], usage="恶寒发热")),
             ("桂枝", render_explanation(["发汗解表", "温通经脉"], indication="无汗")),
             ("杏仁", render_explanation(["止咳平喘"], usage="咳嗽")), ("甘草", NO_RECORD),
             ("生姜", render_explanation(["发汗解表"], usage="恶寒发热")),
             ("防己", render_explanation(usage="小便不利"))]
    assert compose_summary([]) == ""
    assert compose_summary(steps) == ("麻黄、生姜发汗解表，共治恶寒发热；桂枝发汗解表，治无汗；杏仁止咳平喘，治咳嗽；"
                                      f"甘草（{NO_RECORD}）；防己治小便不利。")
    assert compose_summary([("陈皮", "燥湿化痰，主治咳嗽"), ("甘草", "调和诸药"), ("桔梗", "祛痰，主治咳嗽"),
                            ("半夏", "燥湿化痰，用于咳嗽"), ("大枣", "调和诸药")]) == (
        "陈皮、半夏燥湿化痰，桔梗祛痰，共治咳嗽；甘草、大枣调和诸药。")


def test_a_revision_round_trips_and_its_summary_names_only_what_is_left():
    moves = [("add", "麻黄", "发汗，主治恶寒"), ("add", "附子", "回阳救逆"), ("add", "杏仁", "止咳平喘"),
             ("remove", "附子", render_removal(["回阳救逆"])), ("add", "桂枝", "解肌")]
    assert revised(moves) == [("麻黄", "发汗，主治恶寒"), ("杏仁", "止咳平喘"), ("桂枝", "解肌")]
    r = parse_response(render_moves("主症：恶寒。", moves))
    assert r.well_formed and r.herbs == ["麻黄", "杏仁", "桂枝"]
    assert [s.action for s in r.steps] == ["add", "add", "add", "remove", "add"]
    assert "附子" not in r.summary and r.summary.count("麻黄") == 1
    assert render_removal(["回阳救逆"]) == f"回阳救逆，{NOT_NEEDED}" and render_removal() == NOT_NEEDED
    assert explanation_claims(render_removal(["回阳救逆"])) == [Claim("effect", "回阳救逆")]


def test_format_tokens_allow_removals_only_of_held_draft_herbs_and_never_a_removed_herb_again():
    herbs = tuple(range(100, 110))
    fmt = FormatTokens(add=1, remove=2, stop=3, newline=4, herbs=herbs)
    draft = [1, 100, 9, 4, 1, 101, 9, 4]  # 加A：…\n 加B：…\n (9: an explanation token)
    assert fmt.allowed(draft) == [1, 3]  # building from nothing: no removal
    assert fmt.allowed(draft, draft_size=2) == [1, 2, 3]
    assert fmt.allowed([*draft, 2], draft_size=2) == [100, 101]
    removed = [*draft, 2, 100, 9, 4]
    assert fmt.chosen(removed) == [101]
    assert 100 not in fmt.allowed([*removed, 1], draft_size=2) and 101 not in fmt.allowed([*removed, 1])
    assert fmt.allowed(draft, max_herbs=2, draft_size=2) == [2, 3]  # full: only removing or stopping
    assert fmt.allowed([], draft_size=0) == [1] and fmt.allowed([*draft, 3]) is None
    added = [*draft, 1, 102, 9, 4]  # 加C：… after the draft
    assert fmt.allowed([*added, 2], draft_size=2) == [100, 101]  # C, added in the revision, is not removable
    emptied = [*added, 2, 100, 9, 4, 2, 101, 9, 4]  # both draft herbs removed: only C is left
    assert fmt.allowed(emptied, draft_size=2) == [1, 3]
