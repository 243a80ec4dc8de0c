"""The layer rules of mirror's packages, checked on every import in the source.

Every module under ``mirror/`` is parsed (``ast``) and each of its imports of ``mirror`` -- at
the top, inside functions, under ``if TYPE_CHECKING:`` alike -- is checked against the rank
table below. A package may import packages of a LOWER rank only; packages of the same rank
may not import each other unless ``SAME_RANK_EXCEPTIONS`` lists the pair with its reason.
On top of the ranks:

* ``wire`` imports nothing of mirror (not even the root package);
* ``fingerprint`` imports ``wire`` only.

The ranks, lowest first (the target structure; README's Layout section says the same):

0. ``wire`` (sans-I/O parsers), ``terminal``, ``paths``, and the root package ``mirror``
   (``__version__`` only)
1. ``fingerprint`` (pure functions over parsed values), ``tls_policy``, ``verified_chains``
2. ``emit`` (what to send upstream), ``replay`` (the sans-I/O TLS client), ``ca``, ``net``
   (sockets, kernel interfaces)
3. ``upstream`` (the upstream-TLS engines: libcurl and replay)
4. ``record`` (the capture record)
5. ``store`` (the capture store), ``pcapfile``
6. ``identify`` (references, the identify and diff commands)
7. ``check``, ``echo``, ``gateway``, ``proxy``
8. ``cli``, ``__main__``

So, for instance: ``net`` imports no ``store`` or ``record``; ``store`` no ``proxy`` or
``identify``. A package or top-level module missing from the table fails the test: place it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

RANKS: dict[str, int] = {
    "mirror": 0, "wire": 0, "terminal": 0, "paths": 0,
    "fingerprint": 1, "tls_policy": 1, "verified_chains": 1,
    "emit": 2, "replay": 2, "ca": 2, "net": 2,
    "upstream": 3,
    "record": 4,
    "store": 5, "pcapfile": 5,
    "identify": 6,
    "check": 7, "echo": 7, "gateway": 7, "proxy": 7,
    "cli": 8, "__main__": 8,
}

# (importer, imported) packages of the same rank that may import each other, with the reason.
SAME_RANK_EXCEPTIONS: dict[tuple[str, str], str] = {
    ("__main__", "cli"): "`python -m mirror` is the console script: it calls cli.main",
    ("net", "emit"): "the SYN queue (net.tcp_mirror) applies the pure SYN rewrite that emit "
                     "plans (emit.syn_rewrite); emit imports nothing of net",
}

# TEMPORARY: top-level modules that are moving into the package named (and are ranked as it
# until then). Empty this once they have moved.
MOVING_INTO: dict[str, str] = {
}

# TEMPORARY: violations in today's code that restructurings under way remove. Each entry is
# (importing module, imported module). The test fails when one of them no longer exists, so
# this list only shrinks: delete an entry as soon as its import is gone, until none is left.
KNOWN_VIOLATIONS: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class Import:
    module: str      # the importing module, e.g. mirror.net.tcp_mirror
    path: Path
    line: int
    target: str      # the imported module (or name), e.g. mirror.store.deferred


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a ``from ... import`` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    drop = node.level - 1 if is_package else node.level
    base = base[: len(base) - drop]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(root: Path) -> Iterator[Import]:
    """Every import of the package at ``root`` by its own modules, wherever it is written."""
    package = root.name
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node, module, path.name == "__init__.py")
                if base == package:     # from mirror import wire: the names may be modules
                    targets = [f"{package}.{alias.name}" for alias in node.names]
                else:
                    targets = [base]
            for target in targets:
                if target == package or target.startswith(package + "."):
                    yield Import(module, path, node.lineno, target)


def component(name: str, root: Path) -> str:
    """The ranked package a module belongs to: ``mirror.store.x`` -> ``store``."""
    parts = name.split(".")
    if len(parts) == 1:
        return parts[0]
    first = parts[1]
    if not (root / first).is_dir() and not (root / f"{first}.py").is_file():
        return parts[0]         # a name defined in the root package (mirror.__version__)
    return MOVING_INTO.get(first, first)


def violations(root: Path) -> list[tuple[Import, str]]:
    """Each import that breaks a layer rule, with the rule it breaks."""
    found = []
    for imp in imports_of(root):
        source, target = component(imp.module, root), component(imp.target, root)
        if source == target:
            continue
        for name in (source, target):
            if name not in RANKS:
                found.append((imp, f"{name!r} has no rank: place it in RANKS (test_layers.py)"))
                break
        else:
            if source == "wire":
                found.append((imp, "wire imports nothing of mirror"))
            elif source == "fingerprint" and target != "wire":
                found.append((imp, "fingerprint imports wire only"))
            elif RANKS[target] > RANKS[source]:
                found.append((imp, f"{source} (rank {RANKS[source]}) imports upward: {target} "
                                   f"(rank {RANKS[target]})"))
            elif (RANKS[target] == RANKS[source]
                  and (source, target) not in SAME_RANK_EXCEPTIONS):
                found.append((imp, f"{source} and {target} share rank {RANKS[source]}: no "
                                   "import between them (unless SAME_RANK_EXCEPTIONS says why)"))
    return found


def _describe(imp: Import, rule: str) -> str:
    return f"{imp.path.relative_to(REPO)}:{imp.line}: {imp.module} imports {imp.target}: {rule}"


def test_no_import_breaks_a_layer_rule() -> None:
    broken = [(imp, rule) for imp, rule in violations(REPO / "mirror")
              if (imp.module, imp.target) not in KNOWN_VIOLATIONS]
    assert not broken, "layer rules broken:\n" + "\n".join(_describe(*v) for v in broken)


def test_every_known_violation_still_exists() -> None:
    """KNOWN_VIOLATIONS only shrinks: an entry whose import is gone must be deleted."""
    present = {(imp.module, imp.target) for imp, _ in violations(REPO / "mirror")}
    stale = sorted(KNOWN_VIOLATIONS - present)
    assert not stale, ("these violations are fixed: delete them from KNOWN_VIOLATIONS in "
                       f"tests/test_layers.py: {stale}")


def test_the_walk_finds_imports_inside_functions_and_relative_ones(tmp_path: Path) -> None:
    """The checker itself, on a small tree with one violation of each kind."""
    root = tmp_path / "mirror"
    files = {
        "__init__.py": "__version__ = '0'\n",
        "wire/__init__.py": "",
        "wire/tls.py": "def parse():\n    from mirror import __version__\n",
        "fingerprint/__init__.py": "",
        "fingerprint/tls.py": "from ..wire import tls\nfrom ..tls_policy import x\n",
        "tls_policy.py": "x = 1\n",
        "net/__init__.py": "",
        "net/tcp.py": "import mirror.ca\nif True:\n    from mirror.store.record import y\n",
        "ca/__init__.py": "",
        "store/__init__.py": "",
        "store/record.py": "y = 2\n",
        "nowhere/__init__.py": "import mirror.wire\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    found = {(imp.module, imp.target, imp.line): rule for imp, rule in violations(root)}
    assert found == {
        ("mirror.wire.tls", "mirror.__version__", 2): "wire imports nothing of mirror",
        ("mirror.fingerprint.tls", "mirror.tls_policy", 2): "fingerprint imports wire only",
        ("mirror.net.tcp", "mirror.ca", 1):
            "net and ca share rank 2: no import between them (unless SAME_RANK_EXCEPTIONS "
            "says why)",
        ("mirror.net.tcp", "mirror.store.record", 3):
            "net (rank 2) imports upward: store (rank 5)",
        ("mirror.nowhere", "mirror.wire", 1):
            "'nowhere' has no rank: place it in RANKS (test_layers.py)",
    }
