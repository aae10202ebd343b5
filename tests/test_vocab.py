import numpy as np
import pytest

from conftest import shared_path
from fflm import FflmError, Vocabulary, read_sentences


def test_order_is_count_then_word_and_specials_first():
    v = Vocabulary.build([["b", "a", "c", "b"], ["c", "a", "d"]])
    assert v.words == ["<unk>", "<s>", "</s>", "a", "b", "c", "d"]
    assert v.counts.tolist() == [0, 0, 2, 2, 2, 2, 1]


def test_min_count_and_max_size_map_to_unk():
    sents = [["a"] * 5 + ["b"] * 3 + ["c"] * 2 + ["d"]]
    v = Vocabulary.build(sents, min_count=2)
    assert v.words[3:] == ["a", "b", "c"] and v.counts[v.UNK_ID] == 1
    v = Vocabulary.build(sents, max_size=5)  # three specials + two words
    assert v.words[3:] == ["a", "b"] and v.counts[v.UNK_ID] == 3
    assert v.encode(["a", "c", "zzz"]).tolist() == [3, 0, 0]


def test_literal_unk_is_the_same_symbol():
    v = Vocabulary.build([["<unk>", "a", "<unk>"]])
    assert v.words == ["<unk>", "<s>", "</s>", "a"]
    assert v.counts[0] == 2 and v.encode(["<unk>"]).tolist() == [0]


@pytest.mark.parametrize("tok", ["<s>", "</s>"])
def test_reserved_tokens_in_text_are_refused(tok):
    with pytest.raises(FflmError, match="reserved"):
        Vocabulary.build([["a", tok]])
    with pytest.raises(FflmError, match="reserved"):
        Vocabulary(["a"]).encode(["a", tok])


def test_bad_settings():
    with pytest.raises(FflmError):
        Vocabulary.build([["a"]], min_count=0)
    with pytest.raises(FflmError):
        Vocabulary.build([["a"]], max_size=3)


def test_json_round_trip(tmp_path):
    v = Vocabulary.build([["x", "y", "y", "é"]], min_count=1, max_size=10)
    v.save(tmp_path / "v.json")
    w = Vocabulary.load(tmp_path / "v.json")
    assert w == v and w.counts.tolist() == v.counts.tolist() and w.max_size == 10


@pytest.mark.parametrize(
    "content",
    ['{"words": ["a"], "counts": [1]}', "[1, 2]", "not json", '{"words": ["<unk>","<s>","</s>","a"], "counts": [1]}',
     '{"words": ["<unk>","<s>","</s>","a","a"], "counts": [0,0,0,1,1]}'],
)
def test_corrupt_vocabulary_files_are_refused(tmp_path, content):
    p = tmp_path / "v.json"
    p.write_text(content)
    with pytest.raises(FflmError):
        Vocabulary.load(p)


def test_reproduces_bengio_brown_unk_mapping():
    """min count 4 on raw Brown train gives exactly the <unk> mapping of the shared files."""
    raw = read_sentences(shared_path("brown", "raw", "train.txt"))
    vocab = Vocabulary.build(raw, min_count=4)
    assert len(vocab) == 14113 + 3
    for split in ("train", "valid", "test"):
        raw_split = read_sentences(shared_path("brown", "raw", f"{split}.txt"))
        mapped = read_sentences(shared_path("brown", f"{split}.txt"))
        ids = vocab.encode([w for s in raw_split for w in s])
        expected = np.array([w for s in mapped for w in s], dtype=object)
        assert (np.array(vocab.decode(ids), dtype=object) == expected).all(), split
