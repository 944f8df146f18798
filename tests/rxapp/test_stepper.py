"""The stepper on both backends with the micro model exported by the pipeline; safety-aware decoding; bad models."""

import json
import math
import shutil

import numpy as np
import pytest

from pipeline.data.records import load_split
from pipeline.metrics import summary_metrics
from rxapp.backends import HFBackend, LlamaBackend, ModelLoadError, load_backend
from rxapp.decoding import greedy_stop, stop_probability
from rxapp.draft import read_draft
from rxapp.knowledge import associated, lead_action
from rxapp.modelinfo import (
    FORMAT_KEY,
    HF_METADATA,
    STOP_KEY,
    VOCABULARY_KEY,
    ModelMismatchError,
    StopThresholds,
    model_metadata,
    stop_thresholds,
)
from rxapp.safety import Patient, removal_reason, rules
from rxapp.stepformat import explanation_claims, parse_response
from rxapp.stepper import (
    DraftCheck,
    Recommendation,
    Step,
    StepperConfig,
    choose,
    pool_names,
    recommend,
    safety_removals,
    screen_costs,
)
from rxapp.vocab import vocab


@pytest.fixture(scope="module")
def llama(micro_export):
    backend = LlamaBackend(micro_export / "model-f16.gguf", n_threads=1)
    yield backend
    backend.close()


def run(backend, symptoms, pregnant=False, **settings) -> tuple[list[Step], Recommendation]:
    events = list(recommend(backend, symptoms, Patient(pregnant=pregnant), StepperConfig(**settings)))
    assert isinstance(events[-1], Recommendation) and all(isinstance(e, Step) for e in events[:-1])
    return events[:-1], events[-1]


def test_steps_stream_then_a_whole_recommendation(llama):
    symptoms = list(load_split("test")[0].symptoms)
    steps, final = run(llama, symptoms)
    assert steps and steps == final.steps and [s.index for s in steps] == list(range(1, len(steps) + 1))
    assert len(set(final.herbs)) == len(final.herbs) and set(final.herbs) <= set(vocab().herbs)
    assert [s.elapsed_s for s in steps] == sorted(s.elapsed_s for s in steps)
    assert final.ranking[0] == final.herbs[0] and sorted(final.ranking) == sorted(vocab().herbs)  # greedy: same argmax
    parsed = parse_response(final.text)
    assert parsed.herbs == final.herbs and parsed.stopped  # what it streamed is what it wrote


def test_claims_name_only_this_patients_symptoms(llama):
    for record in load_split("test")[:10]:
        _, final = run(llama, list(record.symptoms))
        for step in final.steps:
            for part in step.explanation.split("，"):
                if part.startswith(("主治", "用于")):
                    assert part[2:] in record.symptoms, (record.id, step.explanation)


def test_greedy_is_deterministic_and_sampling_follows_the_seed(llama):
    symptoms = list(load_split("test")[1].symptoms)
    assert run(llama, symptoms)[1].text == run(llama, symptoms)[1].text
    sampled = [run(llama, symptoms, temperature=1.0, top_p=0.95, seed=s)[1].text for s in (1, 1, 2, 3)]
    assert sampled[0] == sampled[1] and len(set(sampled)) > 1


def test_screen_costs_forbids_severe_and_charges_its_weight_per_rule():
    index = vocab().herb_id
    cost = screen_costs(["甘草"], Patient(), StepperConfig(screen_weight=3.0))
    assert math.isinf(cost[index["甘遂"]]) and math.isinf(cost[index["海藻"]])  # 十八反, severe
    assert cost[index["当归"]] == 0.0
    cost = screen_costs(["人参"], Patient(), StepperConfig(screen_weight=3.0))
    assert cost[index["五灵脂"]] == 3.0  # 十九畏, a warning
    lenient = screen_costs(["甘草"], Patient(), StepperConfig(screen_weight=3.0, forbid_severe=False))
    assert lenient[index["甘遂"]] == 6.0
    assert math.isinf(screen_costs([], Patient(pregnant=True), StepperConfig())[index["麝香"]])
    assert math.isinf(screen_costs([], Patient(), StepperConfig())[index["青木香"]])  # 马兜铃酸: for anyone
    assert screen_costs([], Patient(), StepperConfig(forbid_severe=False))[index["青木香"]] == 0.0
    assert screen_costs([], Patient(pregnant=False), StepperConfig())[index["麝香"]] == 0.0


def test_greedy_stop_is_the_quantile_of_the_models_length_distribution():
    assert stop_probability(0.0, 0.0) == pytest.approx(0.5) and stop_probability(1e4, 0.0) == 0.0  # no overflow
    hazards = [0.1, 0.2, 0.3]  # still open after each boundary: 0.9, 0.72, 0.504
    assert not greedy_stop(hazards) and greedy_stop([*hazards, 0.01])  # 0.499 ≤ ½: the median length
    assert greedy_stop(hazards[:2], threshold=0.75) and not greedy_stop(hazards[:2], threshold=0.7)
    assert greedy_stop([0.6])  # a boundary whose own argmax is stop always stops


def test_stepper_stops_where_the_models_threshold_says(micro_export):
    backend = LlamaBackend(micro_export / "model-f16.gguf")
    try:
        symptoms = load_split("test")[0].symptoms
        lengths = []
        for threshold in (0.9, 0.5, 0.1):
            backend.stop_thresholds = StopThresholds(threshold, 1.0)
            lengths.append(len(next(e for e in recommend(backend, symptoms, cfg=StepperConfig(max_herbs=50))
                                    if isinstance(e, Recommendation)).herbs))
        assert lengths == sorted(lengths) and lengths[0] < lengths[-1]  # a lower threshold: a longer prescription
    finally:
        backend.close()


def test_a_model_herb_limit_cuts_a_prescription_from_nothing_but_not_a_revision(llama, monkeypatch):
    record = load_split("test", "clean")[0]
    monkeypatch.setattr(llama, "stop_thresholds", StopThresholds(scratch=0.0, revision=0.0))  # never stop by chance
    assert len(run(llama, list(record.symptoms), max_herbs=6)[1].herbs) == 6  # the practitioner's own limit
    monkeypatch.setattr(llama, "stop_thresholds", StopThresholds(scratch=0.0, revision=0.0, herb_limit=3))
    assert len(run(llama, list(record.symptoms), max_herbs=6)[1].herbs) == 3  # the model's, the lower of the two
    draft = read_draft(list(record.herbs[:4]))
    revised = revise(llama, list(record.symptoms), draft, max_herbs=6)
    assert len(revised.herbs) > 3  # a revision keeps its draft: the limit is tuned for lists built from nothing


def test_choose_skips_forbidden_tokens():
    logits = np.array([5.0, 1.0, 0.0])
    cost = np.array([math.inf, 0.0, 0.0])
    token, p = choose(logits, [0, 1, 2], StepperConfig(), np.random.default_rng(0), cost)
    assert token == 1 and 0.5 < p < 1.0


def test_no_severe_addition_for_pregnant_patients(llama):
    for record in load_split("test")[:15]:
        _, final = run(llama, list(record.symptoms), pregnant=True)
        assert not [w for w in final.warnings if w.severity == "severe"], record.id


def test_hf_backend_drives_the_same_stepper(micro_export, llama):
    hf = HFBackend.load(micro_export / "hf")
    same = 0
    for record in load_split("test")[:5]:
        a, b = run(hf, list(record.symptoms))[1], run(llama, list(record.symptoms))[1]
        assert parse_response(a.text).stopped
        same += a.herbs == b.herbs
    assert same >= 4  # f16 weights may part from fp32 at a near-tie


def test_bad_model_files_are_named_in_clear_errors(micro_export, tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_backend(tmp_path / "missing.gguf")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes((micro_export / "model-f16.gguf").read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match=r"truncated\.gguf"):
        load_backend(truncated)
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_backend(text)
    folder = tmp_path / "hf"
    shutil.copytree(micro_export / "hf", folder)
    meta = json.loads((folder / HF_METADATA).read_text())
    (folder / HF_METADATA).write_text(json.dumps({**meta, VOCABULARY_KEY: "0" * 64}))
    with pytest.raises(ModelMismatchError, match="another herb vocabulary"):
        load_backend(folder)


def test_pooled_names_fold_a_drugs_probability_into_its_one_name():
    v = vocab()
    logits = np.zeros(len(v.herbs))
    logits[v.herb_id["杏"]], logits[v.herb_id["苦杏仁"]], logits[v.herb_id["杏仁"]] = 2.0, 1.0, 0.5
    pooled = pool_names(logits)
    assert pooled[v.herb_id["杏"]] == -np.inf and pooled[v.herb_id["苦杏仁"]] == -np.inf
    assert pooled[v.herb_id["杏仁"]] == pytest.approx(np.log(np.exp(2.0) + np.exp(1.0) + np.exp(0.5)))
    assert np.exp(pooled[np.isfinite(pooled)] - np.logaddexp.reduce(logits)).sum() == pytest.approx(1.0)


def test_the_stepper_never_writes_a_drug_twice_or_an_other_name(llama):
    v = vocab()
    for record in load_split("test")[:30]:
        _, final = run(llama, list(record.symptoms), max_herbs=30)
        assert not set(final.herbs) & set(v.canonical), (record.id, final.herbs)  # no 杏, 麦门冬, 郁李 …
        for herb in final.herbs:
            assert herb not in v.second_names(set(final.herbs) - {herb}), (record.id, herb, final.herbs)
        assert all(s.name == v.display_name(s.herb) for s in final.steps)
        assert summary_metrics([final.summary], [final.herbs]) == {
            "summary_coverage": 1.0, "summary_foreign": 0.0, "summary_repeats": 0.0}, final.summary


def revise(backend, symptoms, draft, pregnant=False, **settings) -> Recommendation:
    events = list(recommend(backend, symptoms, Patient(pregnant=pregnant), StepperConfig(**settings), draft))
    assert isinstance(events[0], DraftCheck) and isinstance(events[-1], Recommendation)
    assert events[1:-1] == events[-1].steps
    return events[-1]


def test_a_draft_is_explained_then_revised_by_additions_and_removals_of_held_herbs(llama):
    # sampled at T = 1, so that removals, where the model makes any, are exercised
    for seed, record in enumerate(load_split("test", "clean")[:12]):
        wrong = [h for h in ("附子", "黄芪", "大黄", "石膏") if h not in record.herbs][:2]
        draft = read_draft([*record.herbs[:3], *wrong, "鬼药"])
        final = revise(llama, list(record.symptoms), draft, temperature=1.0, seed=seed)
        n = len(draft.herbs)
        assert [(s.action, s.herb) for s in final.steps[:n]] == [("draft", h) for h in draft.herbs]
        held, removed = list(draft.herbs), set()
        for step in final.steps[n:]:
            if step.action == "remove":
                assert step.herb in held
                held.remove(step.herb)
                removed.add(step.herb)
            else:
                assert step.action == "add" and step.herb not in held and step.herb not in removed
                held.append(step.herb)
        assert final.herbs == held and final.draft is draft and parse_response(final.text).stopped
        assert summary_metrics([final.summary], [final.herbs])["summary_coverage"] == 1.0
        assert any(w.rule == "未识别" and "鬼药" in w.message for w in final.warnings)  # kept visible, not checked


def test_revising_a_draft_stops_by_the_models_revision_threshold(llama, monkeypatch):
    record = load_split("test", "clean")[0]
    draft = read_draft(list(record.herbs[:4]))
    monkeypatch.setattr(llama, "stop_thresholds", StopThresholds(scratch=0.0, revision=1.0))
    kept = revise(llama, list(record.symptoms), draft)
    assert kept.unrevised and kept.herbs == list(draft.herbs)  # stopped at its first boundary: the draft as it was
    monkeypatch.setattr(llama, "stop_thresholds", StopThresholds(scratch=1.0, revision=0.0))
    revised = revise(llama, list(record.symptoms), draft, max_herbs=8)
    assert not revised.unrevised and 0.0 < revised.steps[len(draft.herbs)].still_open < 1.0
    assert len(run(llama, list(record.symptoms))[1].herbs) == 1  # from nothing, 1.0 stops at the first boundary


def test_the_safety_check_removes_the_herbs_that_end_the_most_severe_conflicts_then_the_least_likely():
    pregnant, on_warfarin = Patient(pregnant=True), Patient.from_input(False, "华法林")
    likely = {"附子": -5.0, "半夏": -1.0}.get  # the model's fit: 半夏 likelier beside the rest than 附子
    assert safety_removals(["附子", "半夏", "杏仁"], Patient(), likely) == ["附子"]
    assert safety_removals(["附子", "半夏", "杏仁"], Patient(), lambda h: -likely(h)) == ["半夏"]
    # 附子 ends two (妊娠禁用, 十八反 with 半夏), 麝香 one; then 半夏 has no conflict left
    assert safety_removals(["半夏", "麝香", "附子", "杏仁"], pregnant, likely) == ["附子", "麝香"]
    assert safety_removals(["甘草", "甘遂", "大戟", "白芍"], Patient(), len) == ["甘草"]  # 反 both: one removal
    # one warning names all three herbs; only without 丹参 (a major interaction) is it no longer severe
    assert safety_removals(["当归", "丹参", "红花"], on_warfarin, len) == ["丹参"]
    # two major herbs in that one warning: each is removed, the less likely first
    likelier_danshen = {"丹参": -1.0, "枸杞子": -3.0}.get
    assert safety_removals(["丹参", "当归", "枸杞子"], on_warfarin, likelier_danshen) == ["枸杞子", "丹参"]
    assert safety_removals(["麻黄", "桂枝", "杏仁"], pregnant, len) == []
    assert safety_removals(["关木通", "猪苓", "茯苓"], Patient(), len) == ["关木通"]  # 马兜铃酸: for anyone
    withdrawn = [w for w in rules().check_prescription(["关木通", "猪苓"], Patient()) if w.severity == "severe"]
    assert removal_reason("关木通", withdrawn) == "马兜铃酸〔来源未核实〕"  # its source is marked unverified
    ended = [w for w in rules().check_prescription(["当归", "丹参", "红花"], on_warfarin) if "丹参" in w.herbs]
    assert removal_reason("丹参", ended) == "与华法林（warfarin）相互作用，出血风险"


def test_a_drafts_severe_conflicts_are_removed_first_each_step_saying_what_it_ends(llama, monkeypatch):
    monkeypatch.setattr(llama, "stop_thresholds", StopThresholds(scratch=0.0, revision=1.0))  # no move of its own
    draft = read_draft("附子 半夏 麝香 杏仁")
    final = revise(llama, ["咳嗽"], draft, pregnant=True)
    assert [(s.action, s.herb, s.safety) for s in final.steps[len(draft.herbs):]] == [
        ("remove", "附子", True), ("remove", "麝香", True)]
    first, second = final.steps[len(draft.herbs):]
    assert first.explanation == "妊娠禁用；十八反（半夏）" and second.explanation == "妊娠禁用"
    assert {"妊娠禁用", "十八反"} <= {w.rule for w in first.warnings}  # shown as what the removal ends
    assert final.herbs == ["半夏", "杏仁"] and final.unrevised  # the model itself proposed nothing
    assert not any(w.severity == "severe" for w in final.warnings)
    assert "减附子：妊娠禁用；十八反（半夏）\n" in final.text  # written in the step format the model reads on
    alone = revise(llama, ["咳嗽"], draft, pregnant=True, remove_severe=False)  # the model's own revision
    assert alone.unrevised and alone.herbs == list(draft.herbs)
    # not pregnant, removing either of the pair ends it: the model's fit beside the rest of the draft decides
    [removal] = [s for s in revise(llama, ["咳嗽"], read_draft("附子 半夏 杏仁")).steps if s.safety]
    other = ({"附子", "半夏"} - {removal.herb}).pop()
    assert removal.explanation == f"十八反（{other}）" and 0.0 < removal.probability <= 1.0


def test_a_model_that_declares_no_revision_threshold_revises_with_its_own():
    assert stop_thresholds({STOP_KEY: "0.4"}) == StopThresholds(0.4, 0.4)
    assert stop_thresholds({}) == StopThresholds(0.5, 0.5)  # and no herb limit of its own
    assert stop_thresholds(model_metadata(StopThresholds(0.55, 1.0, 8))) == StopThresholds(0.55, 1.0, 8)
    assert stop_thresholds(model_metadata(StopThresholds(0.55, 1.0))).herb_limit is None


def test_a_drafts_own_warnings_come_before_the_first_step(llama):
    draft = read_draft("附子 半夏 甘草")
    check = next(iter(recommend(llama, ["咳嗽"], Patient(), StepperConfig(), draft)))
    assert isinstance(check, DraftCheck) and check.draft is draft
    assert any(w.rule == "十八反" and {"附子", "半夏"} <= set(w.herbs) for w in check.warnings)


def test_a_model_not_trained_on_drafts_builds_from_nothing_but_refuses_a_draft(micro_export, tmp_path):
    folder = tmp_path / "v1"
    shutil.copytree(micro_export / "hf", folder)
    meta = json.loads((folder / HF_METADATA).read_text())
    (folder / HF_METADATA).write_text(json.dumps({**meta, FORMAT_KEY: "1"}))
    with load_backend(folder) as old:
        assert old.format_version == 1 and run(old, ["咳嗽"])[1].herbs
        with pytest.raises(ModelMismatchError, match="format v1"):
            next(iter(recommend(old, ["咳嗽"], Patient(), StepperConfig(), read_draft(formula="麻黄汤"))))


def test_a_reason_cites_the_herbs_best_pair_with_the_patient_or_its_lead_action_alone(llama):
    tied = alone = 0
    for record in load_split("test")[:10]:
        _, final = run(llama, list(record.symptoms))
        for step in final.steps:
            pairs = [(score, a, s) for a, scores in associated(step.herb).items() for s, score in scores.items()
                     if s in record.symptoms]
            claims = explanation_claims(step.explanation)
            if not pairs:
                assert [(c.kind, c.value) for c in claims] == [("effect", lead_action(step.herb))], step.explanation
                alone += 1
                continue
            best = max(pairs)[0]
            cited = (claims[0].value, claims[1].value) if len(claims) == 2 else None
            assert cited in {(a, s) for score, a, s in pairs if score == best}, (record.id, step.herb, claims)
            tied += 1
    assert tied and alone
