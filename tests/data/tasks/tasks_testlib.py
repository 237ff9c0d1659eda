"""Independent checks shared by the task tests: haystack kinds, edit distance."""

import pathlib
import sysconfig

NOISE = (
    "The grass is green. ",
    "The sky is blue. ",
    "The sun is yellow. ",
    "Here we go. ",
    "There and back again. ",
)
LONGEST_SENTENCE = max(len(s) for s in NOISE)


def noise_sentences(text):
    """`text` as whole noise sentences, cycled from the first (fails on anything else)."""
    sentences = []
    while text:
        expected = NOISE[len(sentences) % len(NOISE)]
        assert text.startswith(expected), text[:40]
        sentences.append(expected)
        text = text[len(expected) :]
    return sentences


def stdlib_stream(files):
    """The stdlib files' bytes in order, each ending in a newline (read here, not by the code)."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    parts = []
    for relpath in files:
        data = (root / relpath).read_bytes()
        parts.append(data if data.endswith(b"\n") else data + b"\n")
    return b"".join(parts)


def check_stdlib_haystack(haystack, files, offset):
    """`haystack` (bytes) is whole consecutive lines of `files` from `offset`; the next line's
    length (what did not fit) is returned."""
    assert files and all(f.endswith(".py") for f in files)
    stream = stdlib_stream(files)
    assert offset == 0 or stream[offset - 1 : offset] == b"\n"  # starts at a line
    assert stream[offset : offset + len(haystack)] == haystack
    assert haystack == b"" or haystack.endswith(b"\n")  # ends at a line
    rest = stream[offset + len(haystack) :]
    return rest.index(b"\n") + 1 if b"\n" in rest else None


def levenshtein(a, b):
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]
