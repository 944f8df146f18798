from pipeline.data.records import load_split
from rxapp.vocab import SMGCN


def test_published_split_sizes_and_a_disjoint_validation():
    train, validation, test = load_split("train"), load_split("validation"), load_split("test")
    full = load_split("train_full")
    assert (len(full), len(test)) == (22_917, 3_443)
    assert len(validation) == 2_292 and len(train) + len(validation) == len(full)
    assert not {r.id for r in train} & {r.id for r in validation}
    assert {r.id for r in train} | {r.id for r in validation} == {r.id for r in full}


def test_validation_is_seeded_and_stable():
    assert [r.id for r in load_split("validation")][:5] == [r.id for r in load_split("validation")][:5]
    assert load_split("validation")[0].id == "train-5"  # changes only if the seed or the fraction changes


def test_test_split_is_the_published_file_with_chinese_names():
    first_line = (SMGCN / "test.txt").read_text(encoding="utf-8").splitlines()[0]
    record = load_split("test")[0]
    assert record.id == "test-0"
    assert len(record.symptoms) == len(first_line.split("\t")[0].split())
    assert len(record.herbs) == len(first_line.split("\t")[1].split())
    assert all("\u4e00" <= ch <= "\u9fff" for name in record.herbs for ch in name)
