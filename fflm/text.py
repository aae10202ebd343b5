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


def decode(data, path, errors="strict", first_line=1, bom=True):
    """UTF-8 bytes -> str, with an error naming the file and line of the first bad byte.
    `first_line`: the line `data` starts on (a chunk of a larger file); `bom`: drop a leading
    byte-order mark (only the file's own start has one)."""
    if b"\x00" in data:
        line = data.count(b"\n", 0, data.index(b"\x00")) + first_line
        raise FflmError(f"{path}: looks like a binary file (NUL byte on line {line}), not UTF-8 text")
    try:
        return data.decode("utf-8-sig" if bom else "utf-8", errors=errors)  # -sig: a leading BOM is not a token
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + first_line
        raise FflmError(
            f"{path}: line {line} is not valid UTF-8 (byte 0x{data[e.start]:02x}); "
            "convert the file or pass --encoding-errors replace"
        ) from None


def read_sentences(path, config=TextConfig(), allow_empty=False):
    """Read `path` (plain or .gz) into a list of token lists, one per non-blank line; or, for
    `nltk:NAME[:FILEIDS]`, the sentences of an NLTK corpus (see read_nltk)."""
    if is_nltk(path):
        return read_nltk(path, config)
    text = decode(read_bytes(path), path, config.encoding_errors)
    sentences = []
    for line in text.splitlines():  # \n, \r\n and \r all end a line
        tokens = config.tokenize(line)
        if tokens:
            sentences.append(tokens)
    if not sentences and not allow_empty:
        raise FflmError(f"{path}: no text (the file is empty or only whitespace)")
    return sentences


# --- corpora through NLTK's readers: nltk:brown, nltk:reuters, nltk:gutenberg:austen-emma.txt ----
NLTK_PREFIX = "nltk:"


def is_nltk(path):
    return str(path).startswith(NLTK_PREFIX)


def source_name(path):
    """How a corpus is recorded in a model: an absolute path, or the nltk: name as given."""
    import os

    return str(path) if is_nltk(path) else os.path.abspath(path)


def read_nltk(spec, config=TextConfig()):
    """The sentences of an NLTK corpus, through its own `sents()` reader (already tokenized, so
    only `lowercase` applies), found on NLTK's data path (NLTK_DATA). Optional comma-separated
    file ids after a second colon: nltk:gutenberg:austen-emma.txt,austen-persuasion.txt."""
    name, _, fileids = str(spec)[len(NLTK_PREFIX) :].partition(":")
    if not name.isidentifier():
        raise FflmError(f"{spec}: give an NLTK corpus name, as in nltk:brown or nltk:reuters")
    import nltk.corpus

    reader = getattr(nltk.corpus, name, None)
    if reader is None:
        raise FflmError(f"{spec}: NLTK has no corpus named {name!r}")
    how = f"python -c \"import nltk; nltk.download('{name}')\""
    try:
        sents = reader.sents(fileids.split(",")) if fileids else reader.sents()
        sentences = []
        for sent in sents:
            # a token never holds whitespace (ARPA files and vocabularies split on it)
            tokens = ["_".join(t.split()) for t in sent if t and not t.isspace()]
            if config.lowercase:
                tokens = [t.lower() for t in tokens]
            if tokens:
                sentences.append(tokens)
    except LookupError:
        raise FflmError(f"{spec}: the NLTK corpus {name!r} is not installed; run: {how} "
                        "(or point NLTK_DATA at a folder that has it)") from None
    except AttributeError:
        raise FflmError(f"{spec}: nltk.corpus.{name} is not a corpus with a sents() reader") from None
    except (ValueError, KeyError, OSError) as e:
        raise FflmError(f"{spec}: cannot read it ({e})") from None
    if not sentences:
        raise FflmError(f"{spec}: no sentences")
    return sentences


def fingerprint(path):
    """sha256 of a corpus: of the file's bytes, or of an NLTK corpus's sentences as read."""
    import hashlib

    h = hashlib.sha256()
    if is_nltk(path):
        for sent in read_nltk(path):
            h.update((" ".join(sent) + "\n").encode("utf-8"))
        return h.hexdigest()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
