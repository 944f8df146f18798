"""The page in a real headless Chromium: enter symptoms, watch the steps stream, see a warning, accept a step, edit a
dose, save; the row is read back from the SQLite file and a screenshot is kept as a test artifact."""

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from rxapp.drugs import drug_vocab, rows_for
from rxapp.vocab import vocab
from tests.conftest import ROOT
from tests.rxapp.conftest import feedback_rows
from tests.rxapp.test_ui import recommend

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("RX_TEST_ARTIFACTS", ROOT / "runs" / "test-artifacts"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (.ci/run installs it)")
def test_clinician_reviews_and_saves_in_the_browser(served, symptom_text):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "ui-review.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        outside = []
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(served.url[:-1]) else None)
        page.goto(served.url)
        page.get_by_label("症状（自由文本）Symptoms").fill(symptom_text)
        page.get_by_role("button", name="生成处方 Recommend").click()
        expect(page.locator("#rx-output .rx-step").first).to_be_visible(timeout=60_000)
        expect(page.locator("#rx-session textarea, #rx-session input").first).not_to_have_value("", timeout=120_000)
        steps = page.locator("#rx-output .rx-step").count()
        assert steps >= 1

        page.locator("#rx-accept label").first.click()  # accept step 1
        first_herb = page.locator("#rx-accept label").first.inner_text().split()[-1]
        edited = f"{first_herb} 12g、附子 9g、半夏 6g"
        page.locator("#rx-prescription textarea").fill(edited)
        expect(page.locator("#rx-prescription-safety .rx-severe").first).to_be_visible(timeout=30_000)  # 十八反
        page.locator("#rx-rating").get_by_text("4", exact=True).click()
        page.get_by_role("button", name="保存反馈 Save").click()
        expect(page.locator("#rx-save-status")).to_contain_text("已保存", timeout=30_000)
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()

    assert not outside, f"the page fetched from outside this machine: {outside[:5]}"
    row = [r for r in feedback_rows(served.store.path) if first_herb in r["prescription"] and "附子" in
           r["prescription"] and r["rating"] == 4][-1]
    assert json.loads(row["verdicts"]) == {"1": "accept"}
    assert {"herb": first_herb, "dose_g": 12.0} in json.loads(row["prescription"])
    assert any(w["rule"] == "十八反" for w in json.loads(row["warnings"]))
    assert screenshot.stat().st_size > 10_000


def drug_shown_on_a_step(herbs: list[str]) -> tuple[str, str]:
    """A drug whose only interactions with `herbs` are minor (information, which the screen does not price), and
    the herb it names: entered for the same patient, it leaves the greedy steps as they were and shows on one card."""
    for drug in drug_vocab().drugs:
        found = [(herb, row) for herb in herbs for row, _, _ in rows_for(herb, (drug,))]
        if found and all(row.severity == "minor" for _, row in found):
            return drug.label, found[0][0]
    raise AssertionError(f"no drug has only minor interactions with {herbs}")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (.ci/run installs it)")
def test_a_medication_entered_shows_its_interaction_on_a_step_card(served, symptom_text):
    first = recommend(served.client, symptom_text)[-1][1]
    herbs = [s["herb"] for s in served.store.session(first)["steps"]]
    label, herb = drug_shown_on_a_step(herbs)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(served.url)
        page.get_by_label("症状（自由文本）Symptoms").fill(symptom_text)
        medications = page.locator("#rx-drugs input")
        medications.fill(label)
        medications.press("Enter")
        page.get_by_role("button", name="生成处方 Recommend").click()
        card = page.locator("#rx-output .rx-step", has_text=f"加 {vocab().display_name(herb)}")
        expect(card.locator(".rx-warning", has_text="相互作用")).to_contain_text(label, timeout=120_000)
        expect(page.locator("#rx-output .rx-drugs")).to_contain_text(label)
        expect(page.locator("#rx-output .rx-interactions")).to_contain_text(label, timeout=120_000)  # by the 方解
        browser.close()



# a patient and a classical formula that the shipped default's weights revise with a 减 once they are let revise
# (greedy decoding is deterministic): they remove 麻黄 and 杏仁 from 麻黄汤 for a cough with wheezing, removals a
# practitioner would reject. Its own revision threshold, tuned on validation, proposes no change here: on validation
# drafts its changes lowered the agreement with the doctors' lists, so the test lowers the threshold to its
# from-nothing one.
REVISED_CASE = ("恶寒，发热，无汗，头痛，身痛，咳嗽，气喘", "麻黄汤")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (.ci/run installs it)")
def test_a_formula_revised_with_a_removal_that_the_clinician_rejects(served_default, monkeypatch):
    symptoms, formula = REVISED_CASE
    backend = served_default.engine.model.backend
    monkeypatch.setattr(backend, "stop_thresholds", replace(backend.stop_thresholds,
                                                            revision=backend.stop_thresholds.scratch))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(served_default.url)
        page.get_by_label("症状（自由文本）Symptoms").fill(symptoms)
        page.get_by_text("从初稿或经典方开始").click()
        picker = page.locator("#rx-formula input")
        picker.fill(formula)
        picker.press("Enter")
        page.get_by_role("button", name="生成处方 Recommend").click()
        expect(page.locator("#rx-output .rx-draft")).to_contain_text(formula, timeout=60_000)
        removal = page.locator("#rx-output .rx-step[data-action='remove']").first
        expect(removal).to_be_visible(timeout=120_000)
        expect(page.locator("#rx-session textarea, #rx-session input").first).not_to_have_value("", timeout=120_000)
        label = page.locator("#rx-reject label", has_text="减").first
        removed = label.inner_text().split()[-1]
        label.click()
        page.locator("#rx-rating").get_by_text("3", exact=True).click()
        page.get_by_role("button", name="保存反馈 Save").click()
        expect(page.locator("#rx-save-status")).to_contain_text("已保存", timeout=30_000)
        browser.close()

    [exported] = [r for r in served_default.store.preference_records() if r["draft"]]
    assert exported["draft"]["formula"] == formula and exported["rejected_removals"] == [removed]
