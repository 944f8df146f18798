import pytest

from pipeline.data.records import load_split
from pipeline.data.teacher import TrainStats, teach
from pipeline.model.tokenizer import END_OF_TEXT, build_tokenizer, domain_words
from rxapp.vocab import vocab


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def test_every_herb_symptom_and_format_word_is_one_token(tokenizer):
    multi = [w for w in domain_words() if len(tokenizer.encode(w)) != 1]
    assert not multi


def test_herbs_stay_one_token_inside_step_lines(tokenizer):
    for herb in vocab().herbs:
        pieces = [tokenizer.decode([i]) for i in tokenizer.encode(f"加{herb}：补脾益气，用于咳嗽\n")]
        assert pieces == ["加", herb, "：", "补脾益气", "，", "用于", "咳嗽", "\n"]


def test_distilled_examples_round_trip_without_byte_pieces(tokenizer):
    stats = TrainStats.from_records(load_split("train"))
    for record in load_split("validation")[:200]:
        example = teach(record, stats)
        text = example["prompt"] + example["response"]
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
        assert all("\ufffd" not in tokenizer.decode([i]) for i in ids)


def test_unseen_text_still_encodes_byte_by_byte(tokenizer):
    text = "未见过的字：龘 and émoji 😀"
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_end_of_text_is_special_and_the_build_is_deterministic(tokenizer):
    assert tokenizer.eos_token == END_OF_TEXT and tokenizer.convert_tokens_to_ids(END_OF_TEXT) == 0
    assert build_tokenizer().get_vocab() == tokenizer.get_vocab()
