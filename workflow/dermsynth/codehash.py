"""Which modules of a package a script imports, transitively, and one hash of their code.

Snakemake reruns a rule when its script changes, not when a module the script imports does. The workflow
therefore gives every rule the hash of its script's package imports as a param: editing a module reruns
exactly the rules whose scripts reach it, and what follows them.

The walk is static (``ast``): module-level and function-level imports, relative ones included, and the
parent packages whose ``__init__`` an import runs. It over-approximates on purpose: a module imported in
a function the script never calls still counts, as it would if that call were added.

Comments and comment-only or blank lines do not count in the hash: they cannot change an output, and the
rules that import the library include hours of fine-tuning and generation that a reworded comment should
not repeat. Everything else does, string literals included (report templates are strings).
"""

from __future__ import annotations

import ast
import hashlib
import io
import tokenize
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ExternalImport:
    """A top-level import of a module outside the package, and where it is."""

    name: str  # top-level module name, e.g. "skimage" for "from skimage.metrics import x"
    module: str  # the importing module ("" for the script)
    optional: bool  # inside ``try: ... except ImportError``: the code runs without it


@dataclass
class Closure:
    """The package modules a script reaches (name -> file) and every outside import along the way."""

    modules: dict[str, Path] = field(default_factory=dict)
    external: list[ExternalImport] = field(default_factory=list)


def module_file(root: Path, name: str) -> Path | None:
    """The file of dotted module ``name`` under ``root`` (a module or a package ``__init__``), or None."""
    base = Path(root, *name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def read_source(path: Path) -> str:
    """The file's text with ``\\r\\n`` and ``\\r`` line endings made ``\\n``."""
    return path.read_bytes().decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


def code_text(source: str) -> str:
    """``source`` without comments, comment-only lines and blank lines outside strings.

    Source that does not tokenize (a syntax error) is returned whole: it still hashes, just stricter.
    """
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return source
    layout = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
    layout.add(tokenize.ENDMARKER)
    code_rows: set[int] = set()
    comment_at: dict[int, int] = {}
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            comment_at[tok.start[0]] = tok.start[1]
        elif tok.type not in layout:
            code_rows.update(range(tok.start[0], tok.end[0] + 1))
    lines = source.split("\n")
    kept = []
    for row, line in enumerate(lines, start=1):
        if row not in code_rows:
            continue
        if row in comment_at:
            line = line[: comment_at[row]].rstrip()
        kept.append(line)
    return "\n".join(kept) + "\n"


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _catches_import_error(node: ast.Try) -> bool:
    for handler in node.handlers:
        names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        for n in names:
            if isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError"):
                return True
    return False


def _imports(tree: ast.AST):
    """(node, optional) for every import statement anywhere in ``tree``."""

    def visit(node, optional):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, optional
        if isinstance(node, ast.Try) and _catches_import_error(node):
            for child in node.body:
                yield from visit(child, True)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                yield from visit(child, optional)
            return
        for child in ast.iter_child_nodes(node):
            yield from visit(child, optional)

    yield from visit(tree, False)


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def import_closure(script: Path, root: Path, package: str = "dermsynth") -> Closure:
    """Every module of ``package`` (found under ``root``) that ``script`` imports, transitively.

    ``script`` itself is not part of the result: it lies outside the package (Snakemake tracks it).
    """
    script, root = Path(script), Path(root)
    closure = Closure()
    queue: list[tuple[str, Path]] = [("", script)]  # each module enters once: cycles end

    def want(name: str) -> None:
        """Queue package module ``name`` and the parent packages whose ``__init__`` importing it runs."""
        for mod in _parents(name):
            path = module_file(root, mod)
            if path is not None and mod not in closure.modules:
                closure.modules[mod] = path
                queue.append((mod, path))

    while queue:
        modname, path = queue.pop()
        try:
            tree = ast.parse(read_source(path), filename=str(path))
        except SyntaxError:
            continue  # hashed as text; the job that imports it fails with Python's own error
        for node, optional in _imports(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    top = alias.name.split(".")[0]
                    if top == package:
                        want(alias.name)
                    else:
                        closure.external.append(ExternalImport(top, modname, optional))
                continue
            if node.level:  # relative: always inside the package
                if not modname:
                    continue  # a relative import in a script is an error Python reports itself
                pkg = modname if _is_package(path) else modname.rpartition(".")[0]
                parts = pkg.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
                top = target.split(".")[0]
                if top != package:
                    closure.external.append(ExternalImport(top, modname, optional))
                    continue
            want(target)
            for alias in node.names:
                # `from pkg import name`: name may be a submodule or just an attribute of pkg
                if alias.name != "*" and module_file(root, f"{target}.{alias.name}"):
                    want(f"{target}.{alias.name}")
    closure.modules = dict(sorted(closure.modules.items()))
    return closure


def code_hash(script: Path, root: Path, package: str = "dermsynth") -> str:
    """A short hex digest of the code of every ``package`` module that ``script`` imports."""
    h = hashlib.sha256()
    for name, path in import_closure(script, root, package).modules.items():
        h.update(f"{name}\0{code_text(read_source(path))}\0".encode())
    return h.hexdigest()[:16]
