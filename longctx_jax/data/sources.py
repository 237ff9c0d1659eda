"""Byte corpora as grain data sources: the Python standard library's .py files, or any folder.

A document is one file's bytes, a uint8 array (token = byte value, see `vocab`), or, with
`join_packages`, the bytes of all files sharing a parent folder (a package's modules), in path order
with one newline byte between files, named by the folder's relative path (top-level files stay one
document each, named by their path). Files are listed once, sorted by relative path; empty files are
skipped (they hold no next-token target). Bytes are read lazily on access, never cached. The
train/validation split is by document: one is held out iff a stable hash (sha256) of its name falls
below `validation_fraction`, so the split is the same on every machine and run, no document is in
both, and raising the fraction only moves documents from train to validation.

A document's domain (its source, for `lengths.upsample_weights`) is the first folder of its files'
relative paths ("email/mime/text.py" -> "email"; top-level files share the domain "").

The stdlib corpus skips `site-packages`/`dist-packages` (installed third-party code, which differs
by machine) and, unless asked, the test folders (`test`, `tests`, `idle_test`), which some
distributions ship separately; what remains (CPython 3.12) is ~680 files, ~11 MB, of real
long-range structure.
"""

import glob
import hashlib
import os
import pathlib
import posixpath
import sysconfig

import grain
import numpy as np

SPLITS = ("train", "validation")
_SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})
_TEST_DIRS = frozenset({"test", "tests", "idle_test"})


def stdlib_root():
    """The standard library folder of the running Python (sysconfig's "stdlib" path)."""
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(*, include_tests=False):
    """(root, sorted relative paths) of the stdlib's non-empty .py files."""
    root = stdlib_root()
    skipped = _SKIPPED_DIRS if include_tests else _SKIPPED_DIRS | _TEST_DIRS
    relpaths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skipped]
        for name in filenames:
            path = pathlib.Path(dirpath, name)
            if name.endswith(".py") and path.is_file() and path.stat().st_size > 0:
                relpaths.append(path.relative_to(root).as_posix())
    return root, sorted(relpaths)


def _glob_root(pattern):
    """The longest leading folder of `pattern` without glob magic (relative paths hang off it)."""
    parts = pathlib.PurePath(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return pathlib.Path(*fixed) if fixed else pathlib.Path(".")


def folder_files(pattern):
    """(root, sorted relative paths) of the non-empty files matching `pattern` (`**` recurses)."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"pattern={pattern!r}: expected a non-empty glob pattern")
    root = _glob_root(os.path.expanduser(pattern))
    relpaths = sorted(
        pathlib.Path(p).relative_to(root).as_posix()
        for p in glob.glob(os.path.expanduser(pattern), recursive=True)
        if os.path.isfile(p) and os.path.getsize(p) > 0
    )
    if not relpaths:
        raise ValueError(f"folder_glob={pattern!r}: matched no non-empty files")
    return root, relpaths


def is_validation_file(relpath, validation_fraction):
    """Whether `relpath` is held out: sha256(relpath), as a fraction in [0, 1), < the fraction."""
    digest = hashlib.sha256(relpath.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < validation_fraction


def split_files(relpaths, validation_fraction):
    """(train, validation) lists of `relpaths`, in their given order."""
    held_out = [is_validation_file(p, validation_fraction) for p in relpaths]
    train = [p for p, v in zip(relpaths, held_out, strict=True) if not v]
    validation = [p for p, v in zip(relpaths, held_out, strict=True) if v]
    return train, validation


def path_domain(relpath):
    """The first folder of a relative POSIX path; "" for a top-level file."""
    head, sep, _ = relpath.partition("/")
    return head if sep else ""


def package_documents(relpaths):
    """`join_packages`' documents, {name: files}: sorted `relpaths` grouped by parent folder
    (named by the folder's path), each top-level file alone (named by its path); names sorted."""
    documents = {}
    for relpath in relpaths:
        documents.setdefault(posixpath.dirname(relpath) or relpath, []).append(relpath)
    return {name: tuple(documents[name]) for name in sorted(documents)}


def _sizes(root, relpaths):
    return np.array([os.stat(root / p).st_size for p in relpaths], np.int64)


class ByteFileSource:
    """A grain RandomAccessDataSource of files: `source[i]` is file i's bytes, uint8 [num_bytes]."""

    def __init__(self, root, relpaths):
        self.root = pathlib.Path(root)
        self.relpaths = tuple(relpaths)

    def __len__(self):
        return len(self.relpaths)

    def __getitem__(self, index):
        data = (self.root / self.relpaths[index]).read_bytes()
        return np.frombuffer(data, dtype=np.uint8)

    def lengths(self):
        """Tokens (bytes) per document, from the file sizes (no file is read)."""
        return _sizes(self.root, self.relpaths)

    def domains(self):
        """Each document's domain (`path_domain` of its path)."""
        return [path_domain(p) for p in self.relpaths]

    def __repr__(self):
        return f"ByteFileSource(root={str(self.root)!r}, num_files={len(self.relpaths)})"


class JoinedFileSource:
    """A grain RandomAccessDataSource of joined files: `documents` maps a name to its files, and
    `source[i]` is document i's files' bytes, a newline between files, uint8 [num_bytes]."""

    def __init__(self, root, documents):
        self.root = pathlib.Path(root)
        self.names = tuple(documents)
        self.files = tuple(tuple(documents[name]) for name in self.names)

    def __len__(self):
        return len(self.names)

    def __getitem__(self, index):
        data = b"\n".join((self.root / p).read_bytes() for p in self.files[index])
        return np.frombuffer(data, dtype=np.uint8)

    def lengths(self):
        """Tokens (bytes) per document, from the file sizes (no file is read)."""
        return np.array([_sizes(self.root, f).sum() + len(f) - 1 for f in self.files], np.int64)

    def domains(self):
        """Each document's domain (`path_domain` of its first file)."""
        return [path_domain(files[0]) for files in self.files]

    def __repr__(self):
        return f"JoinedFileSource(root={str(self.root)!r}, num_documents={len(self.names)})"


def document_source(config, split):
    """The `split` ("train" | "validation") documents of the config's corpus: a ByteFileSource,
    or with `join_packages` a JoinedFileSource."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {SPLITS}")
    if config.source == "stdlib":
        root, relpaths = stdlib_files(include_tests=config.stdlib_include_tests)
    elif config.source == "folder":
        root, relpaths = folder_files(config.folder_glob)
    else:
        raise ValueError(f"data.source={config.source!r}: expected one of ('stdlib', 'folder')")
    documents = package_documents(relpaths) if config.join_packages else None
    names = relpaths if documents is None else list(documents)
    train, validation = split_files(names, config.validation_fraction)
    chosen = train if split == "train" else validation
    if not chosen:
        raise ValueError(
            f"data.validation_fraction={config.validation_fraction!r}: the {split} split of "
            f"{len(names)} documents under {str(root)!r} is empty"
        )
    if documents is None:
        return ByteFileSource(root, chosen)
    return JoinedFileSource(root, {name: documents[name] for name in chosen})


def document_dataset(config, split):
    """grain.MapDataset of the split's documents (uint8 byte arrays), in sorted path order."""
    return grain.MapDataset.source(document_source(config, split))
