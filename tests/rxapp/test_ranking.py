import pytest

from rxapp.ranking import rank_herbs
from rxapp.vocab import vocab


def test_every_herb_by_its_first_step_score_ties_in_vocabulary_order():
    herbs = vocab().herbs
    scores = [0.0] * len(herbs)
    scores[herbs.index("甘草")] = 3.0
    scores[herbs.index("当归")] = 2.0
    scores[herbs.index("桂枝")] = 1.0
    scores[herbs.index("附子")] = -1.0
    ranking = rank_herbs(scores)
    assert ranking[:3] == ["甘草", "当归", "桂枝"] and ranking[-1] == "附子"
    assert ranking[3:-1] == [h for h in herbs if h not in {"甘草", "当归", "桂枝", "附子"}]
    assert sorted(ranking) == sorted(herbs)


def test_scores_must_cover_the_vocabulary():
    with pytest.raises(ValueError):
        rank_herbs([1.0, 2.0])
