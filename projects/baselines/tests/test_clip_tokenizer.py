"""CLIP tokenizer: golden ids from Hugging Face's `CLIPTokenizer` on a small BPE vocabulary that
the test trains and writes in both published layouts (OpenAI's merges .txt.gz and a Hugging
Face folder), negative controls showing that a missing merge or a wrong cleaning step would be
caught, OpenAI's 49,408-id layout, `tokenize`'s padding and truncation, the one error for a
missing vocabulary, and OpenAI's real vocabulary file (CLIP's published ids, and equal to
Hugging Face on it)."""

import collections
import gzip
import html
import itertools
import json
import random

import numpy as np
import pytest
import regex

from scenic_baselines import clip_tokenizer as ct

NUM_MERGES = 300

# Plain sentences, punctuation, numbers, contractions, mixed case, accents (composed and not),
# emoji (with joiners), CJK, zero-width and control characters, combining marks, whitespace.
TEXTS = [
    "a photo of a cat",
    "A Photo Of A DOG on the GRASS.",
    "the quick brown fox jumps over the lazy dog",
    "Hello, world! How are you?? ...fine; thanks: (really) [yes] {no} <maybe>",
    "it's they're we've I'm you'll he'd don't can't IT'S",
    "''s 's 'S' rock'n'roll o'clock",
    "1234567 3.14 -42 $100 50% 2nd 10,000 1e-9",
    "Café naïve résumé Ångström façade",
    "cafe\u0301 decomposed vs café composed",
    "q\u0303 a\u0308\u0301 stacked combining marks",
    "🐱🐶 emoji 👩\u200d👩\u200d👧 family 👍🏽",
    "東京タワーの写真 一只猫 고양이 사진",
    "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom",
    "tabs\tand\nnewlines\r\n\n  and   spaces\u3000ideographic\u00a0nbsp",
    "   leading and trailing   ",
    "x\x1cy\x1fz \x00\x07bell",
    "Ελληνικά λέξεις, русский текст, עברית, العربية",
    "İstanbul ǅ ß ﬃ \uff21\uff22\uff23 it\u2019s",  # Full-width, curly quote.
    "",
    "   \n\t ",
    "!!!???...---___***",
    "<|startoftext|>a photo<|endoftext|>",
]
HTML_TEXTS = ["fish &amp; chips", "&lt;b&gt;x&lt;/b&gt;", "double &amp;amp;", "&#233;t&eacute;"]
LONG_TEXT = " ".join(["a photo of a cat sitting on the mat, seen from above."] * 12)


def byte_chars_reference():
    """GPT-2 / OpenAI's byte -> character table, written out again so ours is checked."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def train_merges(texts, num_merges):
    """A tiny BPE training run (most frequent pair first) on `texts`, so that the merges are the
    kind CLIP has: within words, across bytes of one character, and ending in '</w>'."""
    chars = byte_chars_reference()
    words = collections.Counter()
    for text in texts:
        for word in text.lower().split():
            symbols = [chars[b] for b in word.encode("utf-8")]
            symbols[-1] += "</w>"
            words[tuple(symbols)] += 1
    tokens = set(chars.values()) | {c + "</w>" for c in chars.values()}
    merges = []
    while len(merges) < num_merges:
        pairs = collections.Counter()
        for word, count in words.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += count
        candidates = [(c, p) for p, c in pairs.items() if "".join(p) not in tokens]
        if not candidates:
            break
        _, best = max(candidates)
        merges.append(best)
        tokens.add("".join(best))
        merged_words = collections.Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if word[i : i + 2] == best:
                    out.append("".join(best))
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged_words[tuple(out)] += count
        words = merged_words
    return merges


def write_openai_gz(path, merges, header="#version: 0.2 (skipped, as OpenAI does)"):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(header + "\n" + "".join(f"{a} {b}\n" for a, b in merges))


def write_hf_folder(folder, merges):
    """vocab.json + merges.txt as Hugging Face's CLIP folders hold them, ids in OpenAI's order."""
    folder.mkdir()
    chars = list(byte_chars_reference().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    lines = "".join(f"{a} {b}\n" for a, b in merges)
    (folder / "merges.txt").write_text("#version: 0.2\n" + lines, encoding="utf-8")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    corpus = TEXTS + HTML_TEXTS + [LONG_TEXT, "photography photographs catalog category"]
    merges = train_merges(corpus, NUM_MERGES)
    assert len(merges) == NUM_MERGES
    root = tmp_path_factory.mktemp("clip_vocab")
    write_openai_gz(root / ct.OPENAI_VOCAB_FILE, merges)
    write_hf_folder(root / "hf", merges)
    return root, merges


@pytest.fixture(scope="module")
def tok(files):
    return ct.ClipTokenizer.from_path(files[0] / ct.OPENAI_VOCAB_FILE)


@pytest.fixture(scope="module")
def hf(files):
    """Hugging Face's CLIPTokenizer (transformers 5: the tokenizers backend; it has no
    Python-only CLIP tokenizer any more), from the vocab.json + merges.txt folder."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.CLIPTokenizer.from_pretrained(str(files[0] / "hf"))
    return lambda text: hf.encode(text, add_special_tokens=False)


def random_texts(n, seed=0):
    """Random mixes of what captions hold. Left out: '&' (HTML entities), capital sigma and
    long s, where we follow OpenAI rather than Hugging Face (module docstring)."""
    alphabet = list("aaabcdeeefghiiklmnooprssttuwyTHEÉÅÇ0123456789.,;:!?'\"()-_/ \n\t")
    alphabet += list("éüñçøß东京写真🐱👍\u200b\u200d\u0301\u0308\u00a0\u3000ΩπЖж")
    rng = random.Random(seed)
    return ["".join(rng.choices(alphabet, k=rng.randint(0, 40))) for _ in range(n)]


def test_ids_equal_hugging_face(tok, hf):
    texts = [*TEXTS, LONG_TEXT, *random_texts(300)]
    mismatches = [t for t in texts if tok.encode(t) != hf(t)]
    assert not mismatches
    # The vocabulary is real enough: merges apply (fewer ids than bytes), across many ids.
    ids = tok.encode(TEXTS[0])
    assert len(ids) < len(TEXTS[0].replace(" ", ""))
    assert len({i for t in texts for i in tok.encode(t)}) > 200


def test_html_entities_are_unescaped_as_openai_does(tok, hf):
    for text in HTML_TEXTS:
        unescaped = html.unescape(html.unescape(text))
        assert unescaped != text
        assert tok.encode(text) == hf(unescaped)  # Hugging Face does not unescape itself.
    assert tok.encode("fish &amp; chips") == tok.encode("fish & chips")


def test_deliberate_differences_from_hugging_face(tok, hf):
    """Where Hugging Face and OpenAI disagree, we follow OpenAI (Python's str.lower, special
    tokens after lower-casing, a case-insensitive pattern); this pins those choices."""
    assert tok.encode("ΟΔΟΣ") == hf("οδος") != hf("ΟΔΟΣ")  # Final sigma.
    assert tok.encode("'\u017f") != hf("'\u017f")  # 's also matches an apostrophe + long s.
    assert tok.encode("<|endoftext|>") == tok.encode("<|ENDOFTEXT|>") == [tok.end_id]
    assert tok.encode("<|startoftext|>a photo") == [tok.start_id, *tok.encode("a photo")]


def test_a_missing_merge_is_detected(files, tok, hf):
    """Negative control: the same ids but one merge fewer (the first); the comparison with
    Hugging Face must then fail on some text."""
    _, merges = files
    broken = ct.ClipTokenizer(tok.encoder, merges[1:])
    assert [t for t in TEXTS if broken.encode(t) != hf(t)]
    assert broken.encode(TEXTS[0]) != tok.encode(TEXTS[0])


def test_a_wrong_cleaning_is_detected(files, hf, monkeypatch):
    """Negative control: without lower-casing, or without NFC, ids disagree with Hugging Face."""
    no_lower = lambda text: regex.sub(r"\s+", " ", text).strip()
    monkeypatch.setattr(ct, "clean_text", no_lower)
    fresh = ct.ClipTokenizer.from_path(files[0] / "hf")
    assert fresh.encode("A Photo Of A DOG") != hf("A Photo Of A DOG")
    monkeypatch.setattr(ct, "clean_text", lambda text: no_lower(text).lower())
    fresh = ct.ClipTokenizer.from_path(files[0] / "hf")
    assert fresh.encode("cafe\u0301") != hf("cafe\u0301")
    assert fresh.encode("a photo of a cat") == hf("a photo of a cat")


def test_both_file_layouts_give_the_same_tokenizer(files, tok):
    root, _ = files
    from_hf = ct.ClipTokenizer.from_path(root / "hf")
    from_folder = ct.ClipTokenizer.from_path(root)  # A folder holding the .txt.gz.
    assert from_hf.encoder == tok.encoder == from_folder.encoder
    assert ct.bytes_to_unicode() == byte_chars_reference()
    for text in [*TEXTS, *HTML_TEXTS, LONG_TEXT]:
        assert from_hf.encode(text) == tok.encode(text) == from_folder.encode(text)
    size = 512 + NUM_MERGES + 2  # Bytes, bytes + '</w>', merges, the two special tokens.
    assert (tok.vocab_size, tok.start_id, tok.end_id) == (size, size - 2, size - 1)


def test_openai_layout_keeps_48894_merges(files, tok, tmp_path):
    """OpenAI's file holds more merges than CLIP uses: only the first 48,894 count, which makes
    the 49,408 ids with <|startoftext|> = 49406 and <|endoftext|> = 49407."""
    _, merges = files
    kept = ct.NUM_OPENAI_MERGES - len(merges)  # Filler merges that still count.
    filler = [(f"x{i}", f"y{i}") for i in range(kept + 1000)]
    write_openai_gz(tmp_path / ct.OPENAI_VOCAB_FILE, merges + filler)
    big = ct.ClipTokenizer.from_path(tmp_path / ct.OPENAI_VOCAB_FILE)
    assert (big.vocab_size, big.start_id, big.end_id) == (49408, 49406, 49407)
    assert big.encoder[f"x{kept - 1}y{kept - 1}"] == 49405  # The last merge in.
    assert f"x{kept}y{kept}" not in big.encoder
    for text in TEXTS[:-1]:  # All but the one with special tokens, whose ids moved.
        assert big.encode(text) == tok.encode(text)


def test_tokenize_pads_and_truncates(tok, hf):
    out = tok.tokenize(["a photo of a cat", "", "A DOG"])
    assert out.shape == (3, 77) and out.dtype == np.int32
    ids = hf("a photo of a cat")
    np.testing.assert_array_equal(out[0, : len(ids) + 2], [tok.start_id, *ids, tok.end_id])
    assert not out[0, len(ids) + 2 :].any()
    np.testing.assert_array_equal(out[1, :3], [tok.start_id, tok.end_id, 0])
    np.testing.assert_array_equal(tok.tokenize("a photo of a cat"), out[:1])  # One string.

    long_ids = hf(LONG_TEXT)
    assert len(long_ids) > 100
    (row,) = tok.tokenize([LONG_TEXT])
    assert row.shape == (77,) and row[0] == tok.start_id and row[-1] == tok.end_id
    np.testing.assert_array_equal(row[1:76], long_ids[:75])
    exact = tok.tokenize(LONG_TEXT, context_length=len(long_ids) + 2)[0]
    np.testing.assert_array_equal(exact, [tok.start_id, *long_ids, tok.end_id])
    short = tok.tokenize(LONG_TEXT, context_length=8)[0]
    np.testing.assert_array_equal(short, [tok.start_id, *long_ids[:6], tok.end_id])
    with pytest.raises(ValueError, match="context_length"):
        tok.tokenize("a", context_length=1)


def test_word_cache_is_used(files):
    fresh = ct.ClipTokenizer.from_path(files[0] / "hf")
    first = fresh.encode(LONG_TEXT)
    assert fresh.encode(LONG_TEXT) == first
    assert fresh._word_ids.cache_info().hits >= len(first) // 2


@pytest.mark.parametrize("layout", ["missing", "empty_folder", "vocab_json_only"])
def test_missing_vocabulary_is_one_clear_error(tmp_path, layout):
    path = tmp_path / "clip"
    if layout != "missing":
        path.mkdir()
    if layout == "vocab_json_only":
        (path / "vocab.json").write_text("{}")
    with pytest.raises(ct.VocabularyNotFoundError) as error:
        ct.ClipTokenizer.from_path(path)
    assert isinstance(error.value, FileNotFoundError)
    message = str(error.value)
    for name in (str(path), "bpe_simple_vocab_16e6.txt.gz", "vocab.json", "merges.txt"):
        assert name in message


@pytest.fixture(scope="module")
def real_vocabulary(open_clip_folder):
    """OpenAI's own vocabulary file, as the open_clip_torch wheel ships it (conftest)."""
    path = open_clip_folder / ct.OPENAI_VOCAB_FILE
    assert path.is_file(), path
    return path


def test_real_vocabulary_gives_clips_published_ids(real_vocabulary):
    """The 49,408-id layout of OpenAI's file, and the ids Hugging Face's CLIP documentation
    shows for its example captions."""
    tok = ct.ClipTokenizer.from_path(real_vocabulary)
    assert (tok.vocab_size, tok.start_id, tok.end_id) == (49408, 49406, 49407)
    out = tok.tokenize(["a photo of a cat", "a photo of a dog"], context_length=7)
    np.testing.assert_array_equal(
        out, [[49406, 320, 1125, 539, 320, 2368, 49407], [49406, 320, 1125, 539, 320, 1929, 49407]]
    )


def test_real_vocabulary_ids_equal_hugging_face(real_vocabulary, tmp_path):
    """All 48,894 merges CLIP uses, through Hugging Face's tokenizer from a vocab.json +
    merges.txt folder written from the same file: equal ids on the odd texts, long texts and
    random mixes above."""
    transformers = pytest.importorskip("transformers")
    with gzip.open(real_vocabulary, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")[1 : ct.NUM_OPENAI_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    assert len(merges) == ct.NUM_OPENAI_MERGES and all(len(m) == 2 for m in merges)
    write_hf_folder(tmp_path / "hf", merges)
    hf = transformers.CLIPTokenizer.from_pretrained(str(tmp_path / "hf"))
    tok = ct.ClipTokenizer.from_path(real_vocabulary)
    texts = [*TEXTS, LONG_TEXT, *random_texts(300, seed=1)]
    mismatches = [t for t in texts if tok.encode(t) != hf.encode(t, add_special_tokens=False)]
    assert not mismatches
    # Real merges make whole-word ids of common words (one id each for "a photo of a cat").
    assert len(tok.encode(TEXTS[0])) == 5
