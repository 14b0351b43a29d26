"""The import walk behind the library rerun trigger, on a throwaway package."""

from pathlib import Path

import pytest

from dermsynth.codehash import code_hash, code_text, import_closure

PKG = {
    "pkg/__init__.py": "",
    "pkg/a.py": "from . import b\nimport numpy as np\n",
    "pkg/b.py": "from .sub import c\n",
    "pkg/sub/__init__.py": "from .. import b  # a cycle: b -> sub.c -> ... -> b\n",
    "pkg/sub/c.py": "def f():\n    from ..d import g  # function level\n    return g\n",
    "pkg/d.py": "import pkg.sub\ng = 1\n",
    "pkg/unused.py": "x = 1\n",
    "pkg/opt.py": "try:\n    import tensorboard\nexcept ImportError:\n    tensorboard = None\n",
}


@pytest.fixture
def tree(tmp_path):
    for rel, text in PKG.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    script = tmp_path / "scripts" / "job.py"
    script.parent.mkdir()
    script.write_text("import sys\nfrom pkg import a\n")
    return tmp_path, script


def digest(tree):
    root, script = tree
    return code_hash(script, root, package="pkg")


def test_walk_is_transitive_through_relative_function_level_imports_and_cycles(tree):
    root, script = tree
    closure = import_closure(script, root, package="pkg")
    assert list(closure.modules) == ["pkg", "pkg.a", "pkg.b", "pkg.d", "pkg.sub", "pkg.sub.c"]
    assert closure.modules["pkg.sub"] == root / "pkg" / "sub" / "__init__.py"
    assert {(e.name, e.module, e.optional) for e in closure.external} == {
        ("sys", "", False),
        ("numpy", "pkg.a", False),
    }


def test_import_inside_try_except_import_error_is_optional(tree):
    root, script = tree
    script.write_text("from pkg import opt\n")
    ext = import_closure(script, root, package="pkg").external
    assert [(e.name, e.optional) for e in ext] == [("tensorboard", True)]


@pytest.mark.parametrize("module", ["pkg/a.py", "pkg/sub/c.py", "pkg/d.py", "pkg/__init__.py"])
def test_editing_a_reached_module_changes_the_hash(tree, module):
    before = digest(tree)
    path = tree[0] / module
    path.write_text(path.read_text() + "y = 2\n")
    assert digest(tree) != before


def test_a_module_not_imported_leaves_the_hash_alone(tree):
    before = digest(tree)
    (tree[0] / "pkg" / "unused.py").write_text("x = 2\n")
    (tree[0] / "pkg" / "new.py").write_text("z = 3\n")
    assert digest(tree) == before


def test_comments_blank_lines_and_line_endings_leave_the_hash_alone(tree):
    before = digest(tree)
    c = tree[0] / "pkg" / "sub" / "c.py"
    edited = "# header\n\ndef f():  # why\n\n    from ..d import g  # reworded\n    return g\n"
    c.write_bytes(edited.replace("\n", "\r\n").encode())
    assert digest(tree) == before
    c.write_text(edited.replace("return g", "return g + 0"))
    assert digest(tree) != before


def test_strings_keep_their_hash_marks_and_blank_lines():
    src = 's = """a\n\n# not a comment\n"""\nt = "#x"  # gone\n'
    assert code_text(src) == 's = """a\n\n# not a comment\n"""\nt = "#x"\n'


def test_a_module_that_does_not_parse_still_hashes(tree):
    before = digest(tree)
    (tree[0] / "pkg" / "b.py").write_text("from .sub import c\ndef broken(:\n")
    assert digest(tree) != before


def test_workflow_scripts_reach_their_library_modules():
    root = Path(__file__).resolve().parents[1] / "workflow"
    mods = import_closure(root / "scripts" / "filter.py", root).modules
    assert {"dermsynth", "dermsynth.logs", "dermsynth.filter", "dermsynth.audit"} <= set(mods)
    assert not [m for m in mods if m.startswith("dermsynth.diffusion.finetune")]
    # a package reached through its __init__: every module of the fine-tune counts for its rule
    mods = import_closure(root / "scripts" / "finetune.py", root).modules
    package = root / "dermsynth" / "diffusion" / "finetune"
    parts = {f"dermsynth.diffusion.finetune.{p.stem}" for p in package.glob("*.py") if p.stem[0] != "_"}
    assert parts <= set(mods)
