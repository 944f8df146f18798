import pytest

from rxapp.ranking import rank_herbs
from rxapp.vocab import vocab


def test_generated_herbs_first_then_the_rest_each_by_score():
    herbs = vocab().herbs
    scores = [0.0] * len(herbs)
    scores[herbs.index("甘草")] = 3.0
    scores[herbs.index("当归")] = 2.0
    scores[herbs.index("桂枝")] = 1.0
    ranking = rank_herbs(["麻黄", "桂枝", "杏仁", "麻黄"], scores)
    assert ranking[:5] == ["桂枝", "麻黄", "杏仁", "甘草", "当归"]  # generated: by score, ties in step order
    assert ranking[5:] == [h for h in herbs if h not in {"麻黄", "桂枝", "杏仁", "甘草", "当归"}]  # vocabulary order


def test_scores_must_cover_the_vocabulary():
    with pytest.raises(ValueError):
        rank_herbs([], [1.0, 2.0])
