import gzip

import pytest

from fflm import FflmError, TextConfig, read_sentences


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_one_sentence_per_line_blank_lines_skipped(tmp_path):
    p = write(tmp_path, "a.txt", b"the cat  sat\n\n   \nthe dog\n")
    assert read_sentences(p) == [["the", "cat", "sat"], ["the", "dog"]]


def test_windows_line_endings_and_bom(tmp_path):
    p = write(tmp_path, "a.txt", "\ufeffone two\r\nthree\r\n".encode("utf-8"))
    assert read_sentences(p) == [["one", "two"], ["three"]]


def test_gzip_is_read_transparently(tmp_path):
    p = tmp_path / "a.txt.gz"
    p.write_bytes(gzip.compress("héllo wörld\n".encode()))
    assert read_sentences(p) == [["héllo", "wörld"]]


def test_invalid_utf8_names_file_and_line(tmp_path):
    p = write(tmp_path, "bad.txt", b"fine line\nstill fine\nbroken \xff here\n")
    with pytest.raises(FflmError, match=r"bad.txt: line 3 is not valid UTF-8"):
        read_sentences(p)


def test_invalid_utf8_replace_policy(tmp_path):
    p = write(tmp_path, "bad.txt", b"broken \xff here\n")
    assert read_sentences(p, TextConfig(encoding_errors="replace")) == [["broken", "\ufffd", "here"]]


def test_binary_file_is_refused(tmp_path):
    p = write(tmp_path, "b.bin", b"abc\n\x00\x01\x02")
    with pytest.raises(FflmError, match="binary"):
        read_sentences(p)


@pytest.mark.parametrize("content", [b"", b"  \n\t\n\n"])
def test_empty_or_whitespace_only_is_an_error(tmp_path, content):
    p = write(tmp_path, "e.txt", content)
    with pytest.raises(FflmError, match="no text"):
        read_sentences(p)
    assert read_sentences(p, allow_empty=True) == []


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FflmError, match="no such file"):
        read_sentences(tmp_path / "nope.txt")
    with pytest.raises(FflmError, match="is a directory"):
        read_sentences(tmp_path)


def test_nltk_tokenizer_needs_no_data_and_lowercases(tmp_path):
    p = write(tmp_path, "a.txt", b'He said, "Don\'t go."\n')
    got = read_sentences(p, TextConfig(tokenizer="nltk", lowercase=True))
    assert got == [["he", "said", ",", "``", "do", "n't", "go", ".", "''"]]


def test_unknown_tokenizer_is_an_error():
    with pytest.raises(FflmError, match="unknown tokenizer"):
        TextConfig(tokenizer="spacy")
