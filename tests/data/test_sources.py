"""Corpora: the stdlib corpus is real and non-trivial; the split is by file, disjoint, stable."""

import hashlib
import pathlib

import numpy as np
import pytest

from longctx_jax.data import (
    ByteFileSource,
    JoinedFileSource,
    default_data_config,
    document_dataset,
    document_source,
    folder_files,
    split_files,
    stdlib_files,
)
from longctx_jax.data.sources import is_validation_file, stdlib_root


def test_stdlib_corpus_is_non_trivial_library_code():
    root, relpaths = stdlib_files()
    assert len(relpaths) > 500
    assert relpaths == sorted(relpaths) and len(set(relpaths)) == len(relpaths)
    assert "os.py" in relpaths and "collections/__init__.py" in relpaths
    for relpath in relpaths:
        parts = pathlib.PurePosixPath(relpath).parts
        assert relpath.endswith(".py")
        assert not {"site-packages", "dist-packages", "test", "tests", "idle_test"} & set(parts)
    total = sum((root / p).stat().st_size for p in relpaths)
    assert total > 5_000_000
    assert root == stdlib_root()


def test_including_tests_only_adds_files():
    _, library = stdlib_files()
    _, everything = stdlib_files(include_tests=True)
    assert set(library) <= set(everything)


def test_split_is_disjoint_covering_deterministic_and_by_hash():
    _, relpaths = stdlib_files()
    train, validation = split_files(relpaths, 0.05)
    assert not set(train) & set(validation)
    assert sorted(train + validation) == relpaths
    assert 0.02 < len(validation) / len(relpaths) < 0.09
    assert split_files(list(reversed(relpaths)), 0.05)[1] == list(reversed(validation))
    # Independent restatement of the rule: sha256 of the relative path, as a fraction of 2^64.
    for relpath in relpaths[:50]:
        fraction = int(hashlib.sha256(relpath.encode()).hexdigest()[:16], 16) / 2**64
        assert (relpath in validation) == (fraction < 0.05)


def test_raising_the_fraction_only_moves_files_to_validation():
    _, relpaths = stdlib_files()
    small = set(split_files(relpaths, 0.05)[1])
    large = set(split_files(relpaths, 0.2)[1])
    assert small < large
    assert split_files(relpaths, 0.0) == (relpaths, [])


def test_document_source_reads_the_files_bytes():
    config = default_data_config()
    train = document_source(config, "train")
    validation = document_source(config, "validation")
    assert not set(train.relpaths) & set(validation.relpaths)
    for source in (train, validation):
        for index in (0, len(source) - 1):
            document = source[index]
            assert document.dtype == np.uint8
            assert document.tobytes() == (source.root / source.relpaths[index]).read_bytes()
    dataset = document_dataset(config, "validation")
    assert len(dataset) == len(validation)
    np.testing.assert_array_equal(dataset[3], validation[3])
    with pytest.raises(ValueError, match="split='test'"):
        document_source(config, "test")


def test_folder_source(tmp_path, seed):
    rng = np.random.default_rng(seed)
    texts = {}
    for i in range(30):
        path = tmp_path / f"dir{i % 3}" / f"doc{i}.txt"
        path.parent.mkdir(exist_ok=True)
        texts[path.relative_to(tmp_path).as_posix()] = rng.integers(0, 256, rng.integers(1, 200))
        path.write_bytes(texts[path.relative_to(tmp_path).as_posix()].astype(np.uint8).tobytes())
    (tmp_path / "dir0" / "empty.txt").write_bytes(b"")
    (tmp_path / "dir1" / "skip.md").write_text("not matched")
    root, relpaths = folder_files(str(tmp_path / "**" / "*.txt"))
    assert root == tmp_path and relpaths == sorted(texts)
    config = default_data_config()
    config.source = "folder"
    config.folder_glob = str(tmp_path / "**" / "*.txt")
    config.validation_fraction = 0.3
    train = document_source(config, "train")
    validation = document_source(config, "validation")
    assert sorted(train.relpaths + validation.relpaths) == sorted(texts)
    assert not set(train.relpaths) & set(validation.relpaths)
    for source in (train, validation):
        for relpath, document in zip(source.relpaths, source, strict=True):
            np.testing.assert_array_equal(document, texts[relpath])


def test_byte_file_source_is_a_plain_sequence(tmp_path):
    (tmp_path / "a").write_bytes(b"\x00\xffab")
    source = ByteFileSource(tmp_path, ["a"])
    assert len(source) == 1 and source[0].tolist() == [0, 255, 97, 98]
    assert "num_files=1" in repr(source)


def test_lengths_are_the_file_sizes_and_domains_the_first_folder():
    source = document_source(default_data_config(), "train")
    lengths = source.lengths()
    assert lengths.dtype == np.int64 and len(lengths) == len(source)
    for index in (0, len(source) // 2, len(source) - 1):
        assert lengths[index] == len(source[index])
    domains = dict(zip(source.relpaths, source.domains(), strict=True))
    assert domains["os.py"] == "" and domains["email/mime/text.py"] == "email"


def test_join_packages_joins_each_folders_files_in_path_order(tmp_path):
    texts = {
        "a/x.txt": b"x1\nx2",
        "a/y.txt": b"y",
        "a/b/z.txt": b"zz",
        "c/w.txt": b"w",
        "top1.txt": b"t1",
        "top2.txt": b"t2\n",
    }
    for relpath, text in texts.items():
        (tmp_path / relpath).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relpath).write_bytes(text)
    config = default_data_config()
    config.source, config.folder_glob = "folder", str(tmp_path / "**" / "*.txt")
    config.join_packages, config.validation_fraction = True, 0.0
    source = document_source(config, "train")
    assert isinstance(source, JoinedFileSource)
    want = {
        "a": b"x1\nx2\ny",
        "a/b": b"zz",
        "c": b"w",
        "top1.txt": b"t1",
        "top2.txt": b"t2\n",
    }
    assert source.names == tuple(want)  # sorted names
    assert [source[i].tobytes() for i in range(len(source))] == list(want.values())
    assert source.lengths().tolist() == [len(text) for text in want.values()]
    assert source.domains() == ["a", "a", "c", "", ""]
    config.validation_fraction = 0.5  # the split is by the document's name
    validation = document_source(config, "validation").names
    assert validation == tuple(n for n in want if is_validation_file(n, 0.5))
    assert document_source(config, "train").names == tuple(n for n in want if n not in validation)


def test_join_packages_on_the_stdlib():
    config = default_data_config()
    config.join_packages = True
    root, relpaths = stdlib_files()
    sources = [document_source(config, split) for split in ("train", "validation")]
    names = {name: (source, i) for source in sources for i, name in enumerate(source.names)}
    assert "os.py" in names and "email" in names and "email/mime" in names
    source, index = names["json"]
    files = sorted(p for p in relpaths if p.startswith("json/") and p.count("/") == 1)
    assert source.files[index] == tuple(files) and len(files) > 2
    want = b"\n".join((root / p).read_bytes() for p in files)
    assert source[index].tobytes() == want and source.lengths()[index] == len(want)
    assert max(max(source.lengths()) for source in sources) > 100_000  # long documents exist
