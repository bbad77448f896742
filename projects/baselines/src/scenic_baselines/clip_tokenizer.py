"""CLIP's byte-level BPE tokenizer (OpenAI's `simple_tokenizer.py`, without PyTorch).

CLIP and OWL-ViT text towers were trained on this tokenizer's ids, so it must reproduce them
exactly: 49,408 ids, `<|startoftext|>` = 49406, `<|endoftext|>` = 49407, 77 ids per text.

    tok = ClipTokenizer.from_path("/data/clip/bpe_simple_vocab_16e6.txt.gz")
    tok.tokenize("a photo of a cat")  # int32 [1, 77]: 49406 320 1125 539 320 2368 49407 0 ...

The vocabulary is read from disk, never downloaded: OpenAI's `bpe_simple_vocab_16e6.txt.gz`
(in OpenAI's CLIP repository, and in the open_clip_torch wheel as `open_clip/...`), or a
Hugging Face CLIP model folder holding `vocab.json` and `merges.txt`.

Text cleaning. OpenAI runs `ftfy.fix_text`, unescapes HTML twice, collapses whitespace and
lower-cases. Hugging Face's `CLIPTokenizer` (transformers 5, tokenizers backend) never calls
ftfy, installed or not: its normalizer is NFC, `\\s+` -> " ", lowercase; it does not unescape
HTML. We unescape HTML twice (as OpenAI), then NFC (ftfy's last step, as Hugging Face),
collapse whitespace and lower-case. Our ids therefore equal Hugging Face's except where we
follow OpenAI: `&amp;` is `&`; a word-final capital sigma becomes the final small sigma
U+03C2 (Python's `str.lower`), not U+03C3; `<|endoftext|>` written in capitals is still the
special token; an apostrophe then a long s (U+017F) is one word (OpenAI's IGNORECASE).
Against OpenAI with ftfy, ids differ only on text that ftfy repairs and we leave as is:
mojibake, curly quotes (U+2019 is not an apostrophe here), full-width forms, ligatures,
control and zero-width characters.
"""

import functools
import gzip
import html
import itertools
import json
import pathlib
import unicodedata

import numpy as np
import regex

OPENAI_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
HF_VOCAB_FILE = "vocab.json"
HF_MERGES_FILE = "merges.txt"
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
CONTEXT_LENGTH = 77

# OpenAI keeps only the first 48,894 merges of its file: 256 bytes + 256 "</w>" bytes + merges
# + 2 special tokens = 49,408 ids, the size of CLIP's token embedding.
NUM_OPENAI_MERGES = 49152 - 256 - 2

# OpenAI's pre-tokenization: special tokens, English contractions, letter runs, single digits,
# runs of anything else but whitespace (punctuation, symbols, emoji, combining marks).
_WORD_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"""
    r"""|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


class VocabularyNotFoundError(FileNotFoundError):
    """The CLIP vocabulary files are not where the caller said."""


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's byte -> printable character map, so that BPE never sees spaces or controls.

    Its order is the vocabulary's: printable bytes map to themselves, then the others to 256+n.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]  # fmt: skip
    mapping = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in mapping]
    mapping.update({b: chr(256 + n) for n, b in enumerate(others)})
    return mapping


def clean_text(text: str) -> str:
    """CLIP's cleaning without ftfy (see the module docstring for what that changes)."""
    text = html.unescape(html.unescape(text))
    text = unicodedata.normalize("NFC", text)
    return regex.sub(r"\s+", " ", text).strip().lower()


class ClipTokenizer:
    """Text -> CLIP token ids. Build it with `from_path`."""

    def __init__(self, encoder: dict[str, int], merges: list[tuple[str, str]]):
        for token in (START_TOKEN, END_TOKEN):
            if token not in encoder:
                raise ValueError(f"The CLIP vocabulary lacks the special token {token!r}.")
        self.encoder = encoder
        self.start_id = encoder[START_TOKEN]
        self.end_id = encoder[END_TOKEN]
        self._ranks = {pair: rank for rank, pair in enumerate(merges)}
        self._byte_encoder = bytes_to_unicode()
        # Per instance and bounded: captions and prompts repeat the same words a lot.
        self._word_ids = functools.lru_cache(maxsize=1 << 16)(self._bpe)

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    @classmethod
    def from_path(cls, path) -> "ClipTokenizer":
        """OpenAI's .txt.gz, a folder holding it, or a folder with vocab.json + merges.txt."""
        path = pathlib.Path(path)
        if path.is_dir():
            if (path / HF_VOCAB_FILE).is_file() and (path / HF_MERGES_FILE).is_file():
                return cls._from_hf_folder(path)
            if (path / OPENAI_VOCAB_FILE).is_file():
                return cls._from_openai_file(path / OPENAI_VOCAB_FILE)
        elif path.is_file():
            return cls._from_openai_file(path)
        raise VocabularyNotFoundError(
            f"No CLIP vocabulary at {str(path)!r}. Put OpenAI's {OPENAI_VOCAB_FILE} there (it "
            f"ships in OpenAI's CLIP repository, and in the open_clip_torch wheel as "
            f"open_clip/{OPENAI_VOCAB_FILE}), or give a Hugging Face CLIP model folder holding "
            f"{HF_VOCAB_FILE} and {HF_MERGES_FILE}. Nothing is downloaded."
        )

    @classmethod
    def _from_openai_file(cls, path: pathlib.Path) -> "ClipTokenizer":
        """Builds the vocabulary exactly as OpenAI's simple_tokenizer.py does."""
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        # Line 0 is a version header; the file holds more merges than CLIP uses.
        merges = [tuple(line.split()) for line in lines[1:] if line.strip()]
        merges = merges[:NUM_OPENAI_MERGES]
        byte_tokens = list(bytes_to_unicode().values())
        vocab = [*byte_tokens, *(t + "</w>" for t in byte_tokens),
                 *("".join(m) for m in merges), START_TOKEN, END_TOKEN]  # fmt: skip
        return cls({token: i for i, token in enumerate(vocab)}, merges)

    @classmethod
    def _from_hf_folder(cls, folder: pathlib.Path) -> "ClipTokenizer":
        encoder = json.loads((folder / HF_VOCAB_FILE).read_text(encoding="utf-8"))
        lines = (folder / HF_MERGES_FILE).read_text(encoding="utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines
                  if line.strip() and not line.startswith("#version")]  # fmt: skip
        return cls(encoder, merges)

    def _bpe(self, word: str) -> tuple[int, ...]:
        """Ids of one pre-tokenized word: merge the best-ranked pair until none applies."""
        if word in (START_TOKEN, END_TOKEN):
            return (self.encoder[word],)
        symbols = [self._byte_encoder[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        while len(symbols) > 1:
            best = min(itertools.pairwise(symbols), key=lambda p: self._ranks.get(p, float("inf")))
            if best not in self._ranks:
                break
            merged, i = [], 0
            while i < len(symbols):  # Every occurrence, left to right.
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return tuple(self.encoder[s] for s in symbols)

    def encode(self, text: str) -> list[int]:
        """BPE ids of `text`, without start and end tokens."""
        ids = []
        for word in _WORD_PATTERN.findall(clean_text(text)):
            ids.extend(self._word_ids(word))
        return ids

    def tokenize(self, texts, context_length: int = CONTEXT_LENGTH) -> np.ndarray:
        """int32 [N, context_length]: start, ids, end, zeros. A text too long is cut, and its
        last id made the end token (CLIP's `truncate=True`), so the model still finds it."""
        if isinstance(texts, str):
            texts = [texts]
        if context_length < 2:
            raise ValueError(f"context_length must fit start and end tokens: {context_length}")
        out = np.zeros((len(texts), context_length), np.int32)
        for row, text in zip(out, texts):
            ids = [self.start_id, *self.encode(text), self.end_id]
            if len(ids) > context_length:
                ids = ids[:context_length]
                ids[-1] = self.end_id
            row[: len(ids)] = ids
        return out


class ByteTokenizer:
    """Text -> UTF-8 byte ids, for CLIP-style text towers trained from scratch (demos, tests).

    Needs no vocabulary file and encodes any text, so a small model trained on a few class
    names still accepts every query. Ids: padding 0, byte b -> b + 1, start 257, end 258
    (the highest id, so pooling at the highest id finds it, as with CLIP's tokenizer).
    The text is cleaned as `ClipTokenizer` cleans it (whitespace collapsed, lower case).
    """

    start_id = 257
    end_id = 258
    vocab_size = 259

    def encode(self, text: str) -> list[int]:
        return [byte + 1 for byte in clean_text(text).encode("utf-8")]

    tokenize = ClipTokenizer.tokenize


TOKENIZERS = ("clip", "bytes")


def from_config(kind: str, path: str | None):
    """The tokenizer a config names: 'clip' (`ClipTokenizer.from_path(path)`: OpenAI's
    bpe_simple_vocab_16e6.txt.gz or a Hugging Face folder) or 'bytes' (`ByteTokenizer`, no
    file). Errors are ConfigErrors naming the key."""
    from scenic.common_lib.config_utils import ConfigError

    if kind == "bytes":
        return ByteTokenizer()
    if kind == "clip":
        if not path:
            raise ConfigError(
                f"tokenizer='clip' needs tokenizer_path: OpenAI's {OPENAI_VOCAB_FILE} or a "
                f"Hugging Face folder with {HF_VOCAB_FILE} and {HF_MERGES_FILE} (nothing is "
                "downloaded)."
            )
        return ClipTokenizer.from_path(path)
    raise ConfigError(f"Unknown tokenizer {kind!r}; expected one of {TOKENIZERS}.")


def prompt_tokens(tokenizer, class_names, templates, context_length: int) -> np.ndarray:
    """`[T, C, L]` token ids of every template (one '{}') filled with every class name;
    names are lower-cased with underscores as spaces (LVIS writes 'hot_dog')."""
    names = [str(name).replace("_", " ").lower() for name in class_names]
    return np.stack([tokenizer.tokenize([t.format(n) for n in names], context_length)
                     for t in templates])  # fmt: skip
