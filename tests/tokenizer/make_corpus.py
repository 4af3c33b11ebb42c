#!/usr/bin/env python3
"""make_corpus.py: a deterministic corpus of varied text for tokenizer parity.

Writes a JSON list of documents (strings of a few hundred bytes to a few KB,
newlines included) that together exceed 1 MB of UTF-8. Everything comes from
a seeded random.Random and tables in this file: no network, no data files, the
same bytes on every run. The documents exercise what byte-level BPE and the
GPT-2 pre-tokenizer regex are sensitive to: English prose and contractions,
source code, numbers, white space of every kind, emoji sequences, CJK, Arabic,
Devanagari and other scripts, combining marks, punctuation runs, the literal
"<|endoftext|>" and near misses of it, control characters and random code
points from every plane.

code_point_sweep() gives a second set of documents in which every Unicode
scalar value appears beside a letter, a digit, punctuation and a space, so
that the regex's character classes can be compared one code point at a time.

Usage: make_corpus.py OUT.json [--seed N] [--min-bytes N]
"""

import argparse
import json
import random

WORDS = (
    "the of and to in is was that for it with as his on be at by had are but from or have an "
    "they which one you were her all she there would their we him been has when who will more "
    "no if out so said what up its about into than them can only other new some could time "
    "these two may then do first any my now such like our over man me even most made after "
    "also did many before must through back years where much your way well down should because "
    "each just those people how too little state good very make world still own see men work "
    "long get here between both life being under never day same another know while last might "
    "us great old year off come since against go came right used take three tokenizer model "
    "attention head layer residual stream logit neuron circuit embedding transformer gradient "
    "probability activation interpretability patching induction superposition feature"
).split()

CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d",
                "'S", "'T", "'RE", "'VE", "'M", "'LL", "'D", "'Re", "'rE",
                "\u2019s", "\u2019t", "\u2019ll"]
CONTRACTED = ["it", "don", "can", "they", "we", "I", "you", "she", "John", "IT", "WE", "o"]

PUNCT_RUNS = ["!", "?", "...", "?!", "!!!", "--", "---", "***", "((", "))", "[[", "]]", "{}",
              "<>", "<<", ">>", "''", '""', "``", ";;", "::", "//", "\\\\", "@#", "$%", "^&",
              "~~", "|", "||", "&&", "==", "!=", "->", "=>", "...!", ".,;:", "\u2014", "\u2013",
              "\u2026", "\u00ab", "\u00bb", "\u201c", "\u201d", "\u00bf", "\u00a1", "\u3002",
              "\u3001", "\uff01", "\u00b7", "\u2022", "\u00a7", "\u00b6", "\u2020", "\u2030"]

EMOJI = ["\U0001F600", "\U0001F602", "\U0001F44D", "\U0001F44D\U0001F3FD", "\U0001F44B\U0001F3FF",
         "\U0001F469\u200D\U0001F4BB", "\U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466",
         "\U0001F3F3\uFE0F\u200D\U0001F308", "\u2764\uFE0F", "\u2764", "\U0001F1FA\U0001F1F8",
         "\U0001F1EF\U0001F1F5", "1\uFE0F\u20E3", "#\uFE0F\u20E3", "\U0001F9D1\U0001F3FB\u200D\U0001F680",
         "\U0001F408\u200D\u2B1B", "\U0001F4A9", "\U0001F525", "\u2728", "\U0001F916", "\u263A\uFE0F",
         "\U0001FAE0", "\U0001F3F4\U000E0067\U000E0062\U000E0073\U000E0063\U000E0074\U000E007F"]

SPACES = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r\n\r\n", " \n", "  \n  ",
          "\u00a0", "\u2000", "\u2003", "\u2009", "\u200a", "\u3000", "\u0085", "\u2028", "\u2029",
          "\u202f", "\u205f", "\u1680", "\x0b", "\x0c", "\r", " \t \t", "\u200b", "\ufeff",
          "\u180e", "\x1c", "\x1f"]

# (first, last) code point ranges of scripts, for random "words".
SCRIPTS = {
    "cjk": (0x4E00, 0x9FFF), "hiragana": (0x3041, 0x3096), "katakana": (0x30A1, 0x30FA),
    "hangul": (0xAC00, 0xD7A3), "arabic": (0x0621, 0x064A), "hebrew": (0x05D0, 0x05EA),
    "devanagari": (0x0905, 0x0939), "thai": (0x0E01, 0x0E30), "cyrillic": (0x0410, 0x044F),
    "greek": (0x03B1, 0x03C9), "armenian": (0x0531, 0x0556), "georgian": (0x10D0, 0x10FA),
    "tamil": (0x0B85, 0x0BB9), "ethiopic": (0x1200, 0x1248), "cjk_ext_b": (0x20000, 0x2A6DF),
}
# Marks that attach to letters in those scripts (and combining diacritics).
MARKS = {
    "arabic": (0x064B, 0x0652), "devanagari": (0x093E, 0x094D), "thai": (0x0E31, 0x0E3A),
    "hebrew": (0x05B0, 0x05BC), "latin": (0x0300, 0x036F), "tamil": (0x0BBE, 0x0BCD),
}
ACCENTED = "\u00e0\u00e1\u00e2\u00e3\u00e4\u00e5\u00e6\u00e7\u00e8\u00e9\u00ea\u00eb\u00ec\u00ed" \
           "\u00ee\u00ef\u00f1\u00f2\u00f3\u00f4\u00f5\u00f6\u00f8\u00f9\u00fa\u00fb\u00fc\u00fd" \
           "\u00ff\u00df\u00c0\u00c9\u00d6\u00dc\u0107\u010d\u0111\u011f\u0131\u0142\u0144\u0151" \
           "\u015b\u0161\u017c\u017e\u0219\u021b\u1ea1\u1ec7\u01b0\u01a1"
ODD_NUMERALS = ["\u00b2", "\u00b3", "\u00b9", "\u00bd", "\u00bc", "\u2153", "\u2160", "\u216b",
                "\u2460", "\u2473", "\u0663", "\u06f5", "\u0967", "\u0e52", "\uff11\uff12",
                "\U0001D7D8", "\u2070", "\u2079", "\u3007", "\u4e00"]


def _word(rng):
    w = rng.choice(WORDS)
    r = rng.random()
    if r < 0.08:
        return w.capitalize()
    if r < 0.10:
        return w.upper()
    return w


def _number(rng):
    kind = rng.randrange(10)
    if kind == 0:
        return f"{rng.randrange(10**9):,}"
    if kind == 1:
        return f"{rng.uniform(-1e4, 1e4):.{rng.randrange(1, 8)}f}"
    if kind == 2:
        return "".join(rng.choice("0123456789") for _ in range(rng.randrange(12, 200)))
    if kind == 3:
        return f"{rng.uniform(0, 1):.3e}"
    if kind == 4:
        return f"{rng.randrange(1900, 2100)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
    if kind == 5:
        return f"+1 ({rng.randrange(100, 999)}) {rng.randrange(100, 999)}-{rng.randrange(1000, 9999)}"
    if kind == 6:
        return f"{rng.randrange(100)}%"
    if kind == 7:
        return f"${rng.randrange(10**6):,}.{rng.randrange(100):02d}"
    if kind == 8:
        return f"0x{rng.randrange(2**32):08X}"
    return rng.choice(ODD_NUMERALS) + str(rng.randrange(1000))


def _script_word(rng, script):
    lo, hi = SCRIPTS[script]
    out = []
    for _ in range(rng.randrange(1, 9)):
        out.append(chr(rng.randint(lo, hi)))
        if script in MARKS and rng.random() < 0.3:
            mlo, mhi = MARKS[script]
            out.append(chr(rng.randint(mlo, mhi)))
    return "".join(out)


def _random_scalar(rng):
    """Any Unicode scalar value, weighted towards the planes in use."""
    plane = rng.choice([0, 0, 0, 0, 1, 1, 2, 3, 14, 15, 16])
    while True:
        cp = plane * 0x10000 + rng.randrange(0x10000)
        if not 0xD800 <= cp <= 0xDFFF:
            return chr(cp)


def prose(rng):
    parts = []
    for _ in range(rng.randrange(3, 25)):
        sentence = [_word(rng).capitalize()]
        for _ in range(rng.randrange(3, 18)):
            r = rng.random()
            if r < 0.06:
                sentence.append(rng.choice(CONTRACTED) + rng.choice(CONTRACTIONS))
            elif r < 0.10:
                sentence.append(_number(rng))
            elif r < 0.13:
                sentence.append(f'"{_word(rng)}"')
            elif r < 0.15:
                sentence.append("(" + _word(rng) + ")")
            elif r < 0.17:
                sentence.append(_word(rng) + ",")
            else:
                sentence.append(_word(rng))
        parts.append(" ".join(sentence) + rng.choice([".", ".", ".", "?", "!", "...", ";", ":"]))
        parts.append(rng.choice([" ", " ", " ", "  ", "\n", "\n\n", " \n", "\r\n"]))
    return "".join(parts)


IDENTIFIERS = ["x", "i", "n", "buf", "count", "self", "tokens", "_cache", "layer_idx", "W_Q",
               "HookPoint", "fooBar", "__init__"]


def code(rng):
    def name():
        return rng.choice(IDENTIFIERS)

    lines = []
    indent_unit = rng.choice(["    ", "  ", "\t"])
    depth = 0
    for _ in range(rng.randrange(5, 40)):
        kind = rng.randrange(9)
        if kind == 0:
            line = f"def {name()}({name()}, {name()}={rng.randrange(100)}):"
        elif kind == 1:
            line = f"for ({name()} = 0; {name()} < {rng.randrange(1000)}; {name()}++) {{"
        elif kind == 2:
            line = f"{name()}[{name()}] += {name()} * {rng.uniform(-10, 10):.4f};"
        elif kind == 3:
            line = f'printf("%s: %d\\n", "{_word(rng)}", {name()});'
        elif kind == 4:
            line = f"# {prose(rng)[:60].strip()}"
        elif kind == 5:
            line = f"// TODO({_word(rng)}): {_word(rng)} {_word(rng)}"
        elif kind == 6:
            line = f"if {name()} != {name()} and not {name()}: return {{'{name()}': [{rng.randrange(9)}, None]}}"
        elif kind == 7:
            line = "}" if depth else "pass"
        else:
            line = f"{name()} = {name()}.{name()}({name()}, **kwargs)  "
        lines.append(indent_unit * depth + line + ("  " if rng.random() < 0.1 else ""))
        if line.endswith(":") or line.endswith("{"):
            depth = min(depth + 1, 6)
        elif rng.random() < 0.3:
            depth = max(depth - 1, 0)
    return rng.choice(["\n", "\r\n"]).join(lines) + "\n"


def numbers(rng):
    return " ".join(_number(rng) + rng.choice(["", ",", ";", "\n", " ", "  "])
                    for _ in range(rng.randrange(10, 80)))


def whitespace(rng):
    parts = []
    for _ in range(rng.randrange(20, 120)):
        r = rng.random()
        if r < 0.5:
            parts.append(rng.choice(SPACES) * rng.randrange(1, 4))
        elif r < 0.8:
            parts.append(_word(rng))
        else:
            parts.append(rng.choice(PUNCT_RUNS))
    if rng.random() < 0.5:
        parts.append(" " * rng.randrange(1, 40))
    return "".join(parts)


def emoji(rng):
    parts = []
    for _ in range(rng.randrange(10, 80)):
        r = rng.random()
        if r < 0.5:
            parts.append(rng.choice(EMOJI) * rng.randrange(1, 3))
        elif r < 0.8:
            parts.append(rng.choice([" ", "", "  ", "\n"]))
        else:
            parts.append(_word(rng))
    return "".join(parts)


def scripts(rng):
    names = list(SCRIPTS)
    main = rng.choice(names)
    parts = []
    for _ in range(rng.randrange(10, 120)):
        r = rng.random()
        script = main if r < 0.8 else rng.choice(names)
        parts.append(_script_word(rng, script))
        parts.append(rng.choice([" ", " ", "", "\u3001", "\u3002", "\u060c ", ". ", "\n",
                                 " " + _number(rng) + " "]))
    return "".join(parts)


def accents(rng):
    parts = []
    for _ in range(rng.randrange(20, 100)):
        r = rng.random()
        if r < 0.4:
            w = list(_word(rng))
            for _ in range(rng.randrange(1, 3)):
                w.insert(rng.randrange(len(w) + 1), rng.choice(ACCENTED))
            parts.append("".join(w))
        elif r < 0.7:
            # Decomposed accents and stacked combining marks (e + U+0301, "zalgo").
            base = rng.choice("aeiouAEIOUnczs")
            marks = "".join(chr(rng.randint(0x0300, 0x036F)) for _ in range(rng.randrange(1, 6)))
            parts.append(base + marks + _word(rng))
        else:
            parts.append(_word(rng))
        parts.append(rng.choice([" ", " ", ", ", "\n"]))
    return "".join(parts)


def punctuation(rng):
    parts = []
    for _ in range(rng.randrange(20, 120)):
        parts.append(rng.choice(PUNCT_RUNS) * rng.randrange(1, 5))
        parts.append(rng.choice(["", " ", " ", _word(rng), " " + _word(rng), "'", "' ", " '"]))
    return "".join(parts)


def endoftext(rng):
    eot = "<|endoftext|>"
    near = ["<|endoftext|", "|endoftext|>", "<|endoftext>", "<|endofText|>", "<<|endoftext|>>",
            "< |endoftext|>", "<|end of text|>", "<|endoftext|><", "<|endoftext|>|>"]
    parts = []
    for _ in range(rng.randrange(5, 30)):
        r = rng.random()
        if r < 0.35:
            parts.append(rng.choice(["", " ", "  ", "\n", "\n\n", "a", "'s"]) + eot * rng.randrange(1, 3)
                         + rng.choice(["", " ", "  ", "\n", "The", "'s", "!"]))
        elif r < 0.55:
            parts.append(rng.choice(near))
        else:
            parts.append(prose(rng)[: rng.randrange(10, 300)])
    return "".join(parts)


def markup(rng):
    parts = []
    for _ in range(rng.randrange(5, 40)):
        kind = rng.randrange(6)
        w = _word(rng)
        if kind == 0:
            parts.append(f'<a href="https://example.com/{w}?q={rng.randrange(999)}&lang=en">{w}</a>')
        elif kind == 1:
            parts.append(f"## {w.title()}\n\n- **{w}** _{_word(rng)}_ `{_word(rng)}()`\n")
        elif kind == 2:
            parts.append(json.dumps({w: [rng.randrange(99), rng.random(), None, True]}))
        elif kind == 3:
            parts.append(f"{w}.{_word(rng)}@mail{rng.randrange(99)}.example.org")
        elif kind == 4:
            parts.append(f"| {w} | {_number(rng)} | {_word(rng)} |\n|---|---:|:--|\n")
        else:
            parts.append(f"C:\\Users\\{w}\\AppData\\{_word(rng)}.dll /usr/lib/{w}.so.{rng.randrange(9)}")
        parts.append(rng.choice(["\n", " ", "\n\n"]))
    return "".join(parts)


def random_unicode(rng):
    parts = []
    for _ in range(rng.randrange(30, 200)):
        r = rng.random()
        if r < 0.6:
            parts.append(_random_scalar(rng))
        elif r < 0.7:
            parts.append(chr(rng.randrange(0x20)))  # controls, NUL included
        elif r < 0.8:
            parts.append(chr(rng.randint(0x7F, 0x9F)))
        else:
            parts.append(rng.choice([" ", "a", "1", "!", "'s", "\n", "\u00a0"]))
    return "".join(parts)


def mixed(rng):
    kinds = [prose, code, numbers, whitespace, emoji, scripts, accents, punctuation, markup]
    return "".join(rng.choice(kinds)(rng)[: rng.randrange(50, 800)] for _ in range(rng.randrange(2, 6)))


GENERATORS = [prose, prose, prose, code, code, numbers, whitespace, whitespace, emoji, scripts,
              scripts, accents, punctuation, endoftext, markup, random_unicode, mixed, mixed]

# Pathological but plausible inputs, always included.
FIXED = [
    "",
    " ",
    "<|endoftext|>",
    "a" * 5000,
    " " * 3000 + "x",
    "\n" * 2000,
    "1" * 4000,
    "!" * 3000,
    "\u00e9" * 1500,
    "\U0001F600" * 1000,
    "\u200b" * 1000,
    "\r\n" * 1000 + " end",
    "'s" * 1000,
    " 's't're've'm'll'd 'S'T'RE'VE'M'LL'D\n" * 20,
]


def build_corpus(seed=20240611, min_bytes=1_100_000):
    """The list of documents: FIXED, then generated ones until min_bytes."""
    rng = random.Random(seed)
    docs = list(FIXED)
    total = sum(len(d.encode("utf-8")) for d in docs)
    while total < min_bytes:
        doc = rng.choice(GENERATORS)(rng)
        limit = rng.randrange(200, 4000)
        doc = doc[:limit]
        docs.append(doc)
        total += len(doc.encode("utf-8"))
    return docs


def code_point_sweep(per_document=512):
    """Every scalar value c in "a{c}1{c}!{c} {c}\\n": beside a letter, a digit,
    punctuation and a space, so a code point in a different regex class than
    HF puts it changes the pieces. Private-use planes 15 and 16 and the
    unassigned planes 4-13 are represented by their first 4096 code points."""
    ranges = [(0, 0x40000), (0xE0000, 0xE1000)]
    ranges += [(p * 0x10000, p * 0x10000 + 0x1000) for p in (4, 13, 15, 16)]
    points = [cp for lo, hi in ranges for cp in range(lo, hi) if not 0xD800 <= cp <= 0xDFFF]
    docs = []
    for i in range(0, len(points), per_document):
        docs.append("".join(f"a{chr(c)}1{chr(c)}!{chr(c)} {chr(c)}\n" for c in points[i:i + per_document]))
    return docs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--min-bytes", type=int, default=1_100_000)
    args = parser.parse_args()
    docs = build_corpus(args.seed, args.min_bytes)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(docs, f, ensure_ascii=False)
    print(f"{len(docs)} documents, {sum(len(d.encode('utf-8')) for d in docs)} bytes")


if __name__ == "__main__":
    main()
