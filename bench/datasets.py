"""Benchmark data sets built from what is already on the machine (no downloads of corpora).

* :func:`stdlib_pairs` -- code search over the running interpreter's standard library:
  docstring summary -> function/method source (with the docstring removed).
* :func:`debian_pairs` -- package search over Debian's English package descriptions:
  synopsis -> long description.

Both split train/test by *group* (source file, source package) with a seeded shuffle so the
split is deterministic and no group leaks across it. Run ``python -m bench.datasets stdlib``
or ``python -m bench.datasets debian`` to print the sizes.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import json
import lzma
import os
import random
import shutil
import subprocess
import sys
import sysconfig
import time
from collections import defaultdict
from collections.abc import Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any

from strop.index.code.parse import module_name, parse_tree, split_docstring, usable_docstring

__all__ = [
    "STDLIB_EXCLUDE",
    "debian_pairs",
    "ensure_debian_lists",
    "group_split",
    "read_translations",
    "stdlib_pairs",
]

# gitignore-style patterns (see strop.index.code.parse.iter_python_files): match at any depth.
STDLIB_EXCLUDE: tuple[str, ...] = (
    "test/",
    "tests/",
    "idlelib/",
    "lib2to3/",
    "site-packages/",
    "ensurepip/",
    "turtledemo/",
    "__phello__/",
)

DEFAULT_APT_LISTS = "/var/lib/apt/lists"
APT_UPDATE_CMD = ("apt-get", "update", "-o", "Acquire::Languages=en")
_COMPRESSION_SUFFIXES = (".gz", ".xz", ".lzma", ".bz2", ".lz4", ".zst")


def group_split(
    items: Sequence[dict], key: str, seed: int = 0, test_fraction: float = 0.2
) -> tuple[list[dict], list[dict]]:
    """Split ``items`` into (train, test) so that all items sharing ``item[key]`` land on the
    same side.

    Groups are sorted, shuffled with ``random.Random(seed)`` and moved to test one by one
    until test holds at least ``test_fraction`` of the *items* (so the item ratio is close to
    the requested one even when groups differ in size). Item order is preserved on each side.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    sizes: dict[Hashable, int] = defaultdict(int)
    for item in items:
        sizes[item[key]] += 1
    groups = sorted(sizes)
    random.Random(seed).shuffle(groups)
    target = test_fraction * len(items)
    test_groups: set[Hashable] = set()
    count = 0
    for group in groups:
        if count >= target:
            break
        test_groups.add(group)
        count += sizes[group]
    train = [it for it in items if it[key] not in test_groups]
    test = [it for it in items if it[key] in test_groups]
    return train, test


# --------------------------------------------------------------------------------------
# CPython standard library
# --------------------------------------------------------------------------------------


def stdlib_pairs(root: Path | None = None, seed: int = 0, test_fraction: float = 0.2) -> dict[str, Any]:
    """Docstring -> code pairs from the standard library of the running interpreter.

    Parses every ``.py`` under ``root`` (default ``sysconfig.get_paths()["stdlib"]``) except
    :data:`STDLIB_EXCLUDE` directories. Every function and method (classes are not used) goes
    into ``corpus_all`` as ``{"id", "text"}`` with ``text`` = its source minus the docstring;
    those whose docstring summary passes :func:`strop.index.code.parse.usable_docstring` become pairs
    ``{"query", "positive_id", "code", "module", "path"}``. Pairs are split by source file
    (:func:`group_split`, deterministic for a given ``seed``); ``corpus_test`` holds only the
    test pairs' functions. ``contexts`` maps each id to its ``{"module", "qualname"}`` metadata
    (what gives a code document its embedding header). ``sizes`` summarises the counts.
    """
    root = Path(root) if root is not None else Path(sysconfig.get_paths()["stdlib"])
    parsed = parse_tree(root, extra_ignore=STDLIB_EXCLUDE)
    corpus_all: list[dict[str, str]] = []
    contexts: dict[str, dict[str, str]] = {}
    pairs: list[dict[str, str]] = []
    for doc in parsed.docs:
        if doc.metadata["kind"] == "class":
            continue
        summary, code = split_docstring(doc.text)
        corpus_all.append({"id": doc.id, "text": code})
        contexts[doc.id] = {"module": doc.metadata["module"], "qualname": doc.metadata["qualname"]}
        if usable_docstring(summary):
            path = doc.metadata["path"]
            pairs.append(
                {
                    "query": summary,
                    "positive_id": doc.id,
                    "code": code,
                    "module": module_name(path),
                    "path": path,
                }
            )
    train, test = group_split(pairs, "path", seed=seed, test_fraction=test_fraction)
    test_ids = {p["positive_id"] for p in test}
    corpus_test = [c for c in corpus_all if c["id"] in test_ids]
    sizes = {
        "files": parsed.files,
        "files_skipped": len(parsed.skipped),
        "functions": len(corpus_all),
        "pairs": len(pairs),
        "train": len(train),
        "test": len(test),
        "train_files": len({p["path"] for p in train}),
        "test_files": len({p["path"] for p in test}),
        "corpus_all": len(corpus_all),
        "corpus_test": len(corpus_test),
        "distinct_queries": len({p["query"] for p in pairs}),
    }
    return {
        "train": train,
        "test": test,
        "corpus_all": corpus_all,
        "corpus_test": corpus_test,
        "contexts": contexts,
        "sizes": sizes,
        "skipped": parsed.skipped,
        "root": str(root),
    }


# --------------------------------------------------------------------------------------
# Debian package descriptions
# --------------------------------------------------------------------------------------


def _translation_files(lists_dir: Path) -> list[Path]:
    """``*_i18n_Translation-en`` files (any compression), main archive before updates/security."""
    files = []
    for p in lists_dir.glob("*_i18n_Translation-en*"):
        tail = p.name.split("_i18n_Translation-en", 1)[1]  # "" or a compression suffix
        if p.is_file() and (tail == "" or tail in _COMPRESSION_SUFFIXES):
            files.append(p)

    def rank(p: Path) -> tuple[int, str]:
        name = p.name
        return (1 if ("-security_" in name or "-updates_" in name or "-backports_" in name) else 0, name)

    return sorted(files, key=rank)


def ensure_debian_lists(lists_dir: str | Path = DEFAULT_APT_LISTS) -> list[Path]:
    """Return the Translation-en files in ``lists_dir``, running
    ``apt-get update -o Acquire::Languages=en`` first if there are none.

    Images often set ``Acquire::Languages "none"``, so plain ``apt-get update`` does not fetch
    them. Only the system lists directory can be populated this way; raises ``RuntimeError``
    with the reason if the files are missing and cannot be fetched (not root, no apt-get, no
    network, custom directory).
    """
    lists = Path(lists_dir)
    files = _translation_files(lists) if lists.is_dir() else []
    if files:
        return files
    cmd = " ".join(APT_UPDATE_CMD)
    if lists.resolve() != Path(DEFAULT_APT_LISTS).resolve():
        raise RuntimeError(f"no *_i18n_Translation-en files in {lists}; run `{cmd}` to fetch them")
    if shutil.which("apt-get") is None:
        raise RuntimeError(f"no Translation-en files in {lists} and apt-get is not available")
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        raise RuntimeError(f"no Translation-en files in {lists}; run `sudo {cmd}` (needs root)")
    proc = subprocess.run(APT_UPDATE_CMD, capture_output=True, text=True, check=False)
    files = _translation_files(lists)
    if proc.returncode != 0 or not files:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise RuntimeError(
            f"`{cmd}` exited {proc.returncode} and left {len(files)} Translation-en files in {lists}:\n{tail}"
        )
    return files


def _read_text(path: Path) -> str:
    """Contents of an apt list file, decompressing by suffix (plain, gz, xz/lzma, bz2, lz4, zst).

    lz4/zst have no stdlib codec: uses the ``lz4``/``zstandard`` modules when installed, else
    the ``lz4cat``/``zstdcat`` tools, else apt's own ``apt-helper cat-file``.
    """
    suffix = path.suffix
    if suffix == ".gz":
        data = gzip.decompress(path.read_bytes())
    elif suffix in (".xz", ".lzma"):
        data = lzma.decompress(path.read_bytes())
    elif suffix == ".bz2":
        data = bz2.decompress(path.read_bytes())
    elif suffix in (".lz4", ".zst"):
        data = _decompress_external(path)
    else:
        data = path.read_bytes()
    return data.decode("utf-8", errors="replace")


def _decompress_external(path: Path) -> bytes:
    try:
        if path.suffix == ".lz4":
            import lz4.frame  # type: ignore[import-not-found]

            return lz4.frame.decompress(path.read_bytes())
        import zstandard  # type: ignore[import-not-found]

        return zstandard.ZstdDecompressor().stream_reader(path.open("rb")).read()
    except ImportError:
        pass
    tool = "lz4cat" if path.suffix == ".lz4" else "zstdcat"
    helper = "/usr/lib/apt/apt-helper"
    if shutil.which(tool):
        cmd = [tool, str(path)]
    elif os.path.exists(helper):
        cmd = [helper, "cat-file", str(path)]
    else:
        raise RuntimeError(f"cannot decompress {path}: install {tool} or the Python module")
    return subprocess.run(cmd, capture_output=True, check=True).stdout


def _stanzas(text: str) -> Iterator[dict[str, str]]:
    """RFC 822-style stanzas of an apt index: field -> value (continuation lines kept with
    their leading space, joined by newlines)."""
    fields: dict[str, str] = {}
    last: str | None = None
    for line in text.split("\n"):
        if not line.strip():
            if fields:
                yield fields
            fields, last = {}, None
        elif line[0] in " \t":
            if last is not None:
                fields[last] += "\n" + line
        else:
            name, _, value = line.partition(":")
            last = name.strip()
            fields[last] = value.strip()
    if fields:
        yield fields


def _long_description(continuation: list[str]) -> str:
    """Debian long description -> plain text: `` .`` lines separate paragraphs, lines starting
    with two spaces are verbatim (kept as their own lines), others are wrapped prose."""
    paragraphs: list[list[str]] = [[]]
    for raw in continuation:
        line = raw[1:] if raw.startswith(" ") else raw
        if line.strip() == ".":
            paragraphs.append([])
        else:
            paragraphs[-1].append(line.rstrip())
    out = []
    for para in paragraphs:
        if not para:
            continue
        if any(ln.startswith((" ", "\t")) for ln in para):
            out.append("\n".join(ln.strip() for ln in para))
        else:
            out.append(" ".join(" ".join(para).split()))
    return "\n\n".join(out)


def read_translations(files: Sequence[Path]) -> dict[str, dict[str, str]]:
    """Package -> ``{"package", "synopsis", "description"}`` from Translation-en files.

    Files later in ``files`` override earlier ones (updates/security after the main archive);
    within a file, the first stanza of a package wins.
    """
    records: dict[str, dict[str, str]] = {}
    for path in files:
        seen: set[str] = set()
        for st in _stanzas(_read_text(path)):
            package, desc = st.get("Package"), st.get("Description-en")
            if not package or desc is None or package in seen:
                continue
            seen.add(package)
            first, *rest = desc.split("\n")
            records[package] = {
                "package": package,
                "synopsis": " ".join(first.split()),
                "description": _long_description(rest),
            }
    return records


def _source_packages(lists_dir: Path) -> dict[str, str]:
    """Binary package -> source package, from the ``*_Packages`` indexes in ``lists_dir``
    (``Source:`` field without its version; a package without one is its own source)."""
    mapping: dict[str, str] = {}
    for path in sorted(lists_dir.glob("*_Packages*")):
        if not path.is_file() or ".diff" in path.name:
            continue
        for st in _stanzas(_read_text(path)):
            package = st.get("Package")
            if package and package not in mapping:
                mapping[package] = (st.get("Source") or package).split(" ")[0]
    return mapping


def debian_pairs(
    lists_dir: str | Path = DEFAULT_APT_LISTS, seed: int = 0, test_fraction: float = 0.2
) -> dict[str, Any]:
    """Synopsis -> long-description pairs from Debian's English package descriptions.

    Reads every ``*_i18n_Translation-en*`` file in ``lists_dir`` (fetching them with
    :func:`ensure_debian_lists` if absent). Packages with an empty long description are
    dropped. Packages whose long description is identical (whitespace-normalised) to another's
    -- typically ``libfoo1``/``libfoo-dev``/``foo-doc`` of one project -- are collapsed to the
    alphabetically first package name, so each document has exactly one relevant query.

    Pairs are ``{"query": synopsis, "positive_id": package, "package", "source", "synopsis",
    "description"}``; the corpus is ``[{"id": package, "text": description}]`` over all kept
    packages (``corpus_test``: only the test ones). The split groups packages by *source
    package* taken from the ``*_Packages`` indexes in the same directory; packages not listed
    there (other architectures) fall back to the name prefix before the first ``-``.
    """
    lists = Path(lists_dir)
    files = ensure_debian_lists(lists)
    records = read_translations(files)
    sources = _source_packages(lists)
    by_text: dict[str, str] = {}
    for package in sorted(records):
        desc = records[package]["description"]
        key = " ".join(desc.split())
        if key and key not in by_text:
            by_text[key] = package
    kept = sorted(by_text.values())
    from_index = 0
    pairs: list[dict[str, str]] = []
    for package in kept:
        rec = records[package]
        source = sources.get(package)
        if source is None:
            source = package.split("-")[0]
        else:
            from_index += 1
        pairs.append(
            {
                "query": rec["synopsis"],
                "positive_id": package,
                "package": package,
                "source": source,
                "synopsis": rec["synopsis"],
                "description": rec["description"],
            }
        )
    train, test = group_split(pairs, "source", seed=seed, test_fraction=test_fraction)
    corpus = [{"id": p["package"], "text": p["description"]} for p in pairs]
    corpus_test = [{"id": p["package"], "text": p["description"]} for p in test]
    empty = sum(1 for r in records.values() if not r["description"].strip())
    sizes = {
        "translation_files": len(files),
        "packages": len(records),
        "empty_description": empty,
        "duplicate_description": len(records) - empty - len(kept),
        "pairs": len(pairs),
        "train": len(train),
        "test": len(test),
        "sources": len({p["source"] for p in pairs}),
        "source_from_packages_index": from_index,
        "source_from_name_prefix": len(pairs) - from_index,
        "corpus": len(corpus),
        "corpus_test": len(corpus_test),
        "distinct_queries": len({p["query"] for p in pairs}),
    }
    return {
        "train": train,
        "test": test,
        "corpus": corpus,
        "corpus_test": corpus_test,
        "sizes": sizes,
        "files": [str(f) for f in files],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.datasets {stdlib,debian}``: build the set and print its sizes."""
    parser = argparse.ArgumentParser(prog="python -m bench.datasets", description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=["stdlib", "debian"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.dataset == "stdlib":
        data = stdlib_pairs(seed=args.seed, test_fraction=args.test_fraction)
    else:
        data = debian_pairs(seed=args.seed, test_fraction=args.test_fraction)
    sizes = dict(data["sizes"], seconds=round(time.perf_counter() - start, 2))
    print(json.dumps(sizes, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
