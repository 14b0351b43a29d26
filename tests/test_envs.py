"""Each rule's conda env has every third-party package its script imports, through the library too."""

import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from dermsynth.codehash import import_closure

ROOT = Path(__file__).resolve().parents[1]

# import name -> pip name, where they differ by more than case and "_" vs "-"
PIP_NAME = {
    "cv2": "opencv-python-headless",
    "PIL": "pillow",
    "skimage": "scikit-image",
    "sklearn": "scikit-learn",
    "yaml": "pyyaml",
}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement(spec: str) -> tuple[str, str]:
    """("torch", "==2.13.0") from "torch==2.13.0"; ("python", "=3.11") from a conda "python=3.11"."""
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", spec)
    return norm(m.group(1)), m.group(2).strip()


def env_packages(path: Path) -> dict[str, str]:
    """Package -> version pin of a conda env file, conda and pip entries together."""
    packages = {}
    for dep in yaml.safe_load(path.read_text())["dependencies"]:
        for spec in dep["pip"] if isinstance(dep, dict) else [dep]:
            name, pin = requirement(spec)
            packages[name] = pin
    return packages


def script_rules() -> dict[str, tuple[Path, Path | None]]:
    """Rule name -> (script, conda env file or None), read from rules/*.smk."""
    rules = {}
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for block in re.split(r"^(?=rule \w+:)", smk.read_text(), flags=re.M)[1:]:
            name = re.match(r"rule (\w+):", block).group(1)
            script = re.search(r'^\s+script:\s*\n\s+"([^"]+)"', block, re.M)
            conda = re.search(r'^\s+conda:\s*\n\s+"([^"]+)"', block, re.M)
            if script:
                env = (smk.parent / conda.group(1)).resolve() if conda else None
                rules[name] = ((smk.parent / script.group(1)).resolve(), env)
    return rules


RULES = script_rules()


def test_the_rule_files_are_read():
    scripts = {script.name for script, _ in RULES.values()}
    assert scripts == {p.name for p in (ROOT / "workflow" / "scripts").glob("*.py")}
    assert {"filter", "finetune", "report"} <= set(RULES)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_rule_env_has_every_package_its_code_imports(rule):
    script, env = RULES[rule]
    assert env is not None and env.is_file(), f"rule {rule}: no conda env file"
    closure = import_closure(script, ROOT / "workflow")
    needed = {}
    for imp in closure.external:
        # an import inside `try: ... except ImportError` is optional by design (e.g. tensorboard)
        if imp.optional or imp.name in sys.stdlib_module_names:
            continue
        needed.setdefault(norm(PIP_NAME.get(imp.name, imp.name)), imp.module or script.name)
    have = env_packages(env)
    missing = {pkg: where for pkg, where in needed.items() if pkg not in have}
    assert not missing, f"rule {rule}: {env.name} lacks {missing} (package: imported by)"


@pytest.mark.parametrize("env", sorted((ROOT / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_env_pins_agree_with_pyproject(env):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = dict(requirement(spec) for spec in project["dependencies"])
    have = env_packages(env)
    differ = {name: (pin, pins[name]) for name, pin in have.items() if name in pins and pin != pins[name]}
    assert not differ, f"{env.name}: (env pin, pyproject pin) differ: {differ}"


@pytest.mark.parametrize("rule", sorted(RULES))
def test_rule_carries_the_hash_of_the_library_its_script_imports(rule):
    """Without it, editing a dermsynth module its script imports would rerun nothing."""
    script, _ = RULES[rule]
    smk = "\n".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
    block = re.split(r"^(?=rule \w+:)", smk.split(f"rule {rule}:", 1)[1], flags=re.M)[0]
    assert f'code=code_of("{script.name}")' in block, f"rule {rule}: no code=code_of(...) param"
