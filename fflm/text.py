"""Ingredient I, the raw material: text files into lists of tokenized sentences.

One sentence per line, blank lines skipped. Everything about bytes and encodings is
handled here, so that the layers above only ever see lists of string tokens.
"""

from dataclasses import asdict, dataclass

from .errors import FflmError
from .fileio import read_bytes

TOKENIZERS = ("whitespace", "nltk")
ENCODING_ERRORS = ("strict", "replace")


@dataclass(frozen=True)
class TextConfig:
    """How a text file becomes tokens; saved with every model so eval reads text the same way."""

    tokenizer: str = "whitespace"  # "whitespace" for pre-tokenized text, "nltk" for Treebank-style
    lowercase: bool = False
    encoding_errors: str = "strict"  # "strict": undecodable bytes are an error; "replace": U+FFFD

    def __post_init__(self):
        if self.tokenizer not in TOKENIZERS:
            raise FflmError(f"unknown tokenizer {self.tokenizer!r} (choose from {', '.join(TOKENIZERS)})")
        if self.encoding_errors not in ENCODING_ERRORS:
            raise FflmError(f"unknown encoding-errors policy {self.encoding_errors!r} (strict or replace)")

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        return cls(**{k: d[k] for k in ("tokenizer", "lowercase", "encoding_errors") if k in d})

    def tokenize(self, line):
        """One line of text -> list of tokens."""
        if self.lowercase:
            line = line.lower()
        if self.tokenizer == "whitespace":
            return line.split()
        return _treebank().tokenize(line)


_TREEBANK = None


def _treebank():
    # NLTK's Treebank tokenizer is rule-based and needs no downloaded data (unlike word_tokenize).
    global _TREEBANK
    if _TREEBANK is None:
        from nltk.tokenize import TreebankWordTokenizer

        _TREEBANK = TreebankWordTokenizer()
    return _TREEBANK


def decode(data, path, errors="strict"):
    """UTF-8 bytes -> str, with an error naming the file and line of the first bad byte."""
    if b"\x00" in data:
        line = data.count(b"\n", 0, data.index(b"\x00")) + 1
        raise FflmError(f"{path}: looks like a binary file (NUL byte on line {line}), not UTF-8 text")
    try:
        return data.decode("utf-8-sig", errors=errors)  # -sig: a leading BOM is dropped, not a token
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise FflmError(
            f"{path}: line {line} is not valid UTF-8 (byte 0x{data[e.start]:02x}); "
            "convert the file or pass --encoding-errors replace"
        ) from None


def read_sentences(path, config=TextConfig(), allow_empty=False):
    """Read `path` (plain or .gz) into a list of token lists, one per non-blank line."""
    text = decode(read_bytes(path), path, config.encoding_errors)
    sentences = []
    for line in text.splitlines():  # \n, \r\n and \r all end a line
        tokens = config.tokenize(line)
        if tokens:
            sentences.append(tokens)
    if not sentences and not allow_empty:
        raise FflmError(f"{path}: no text (the file is empty or only whitespace)")
    return sentences
