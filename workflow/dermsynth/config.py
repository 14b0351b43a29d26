"""Config validation: JSON Schema with defaults filled, errors as one line naming the key."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import jsonschema
import yaml

from .errors import ConfigError

#: Where the workflow's tiny_model rule builds tiny random-weight models: a model ref under it is one.
TINY_PREFIX = "results/models/tiny-"
#: The one schema: every default of every section lives here and nowhere else.
SCHEMA = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"


def _with_defaults(validator_cls):
    """A validator that fills `default`s of properties before checking them (jsonschema FAQ recipe)."""
    validate_properties = validator_cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_cls, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def load_schema(path: str | Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def _key(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "required":
        missing = error.message.split("'")[1]
        parts.append(missing)
    if error.validator == "additionalProperties":
        extra = error.message.split("'")[1]
        parts.append(extra)
    if error.validator == "propertyNames":
        parts.append(str(error.instance))
    return ".".join(parts) or "<top level>"


def _explain(error: jsonschema.ValidationError) -> str:
    s = error.schema
    v = error.validator
    if v == "enum":
        return f"{error.instance!r} is not allowed; allowed values: {', '.join(map(str, s['enum']))}"
    if v == "propertyNames":
        allowed = error.schema.get("propertyNames", {}).get("enum") or error.validator_value.get("enum")
        if allowed:
            return f"unknown name; allowed: {', '.join(allowed)}"
        return f"invalid name (must match {error.validator_value.get('pattern')})"
    if v == "additionalProperties":
        known = sorted(s.get("properties", {}))
        return "unknown key" + (f"; known keys here: {', '.join(known)}" if known else "")
    if v == "required":
        return "missing required key"
    if v in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        return f"{error.instance!r} violates {v} {error.validator_value}"
    if v == "type":
        return f"{error.instance!r} must be of type {error.validator_value}"
    if v == "contains" and "const" in error.validator_value:
        return f"{error.instance!r} must include {error.validator_value['const']!r}"
    if v == "oneOf":
        return f"{error.instance!r} must be an integer or a [min, max] pair of integers"
    return error.message.splitlines()[0]


def _propertynames_error(error):
    # jsonschema reports propertyNames failures with the enum as the *sub*-schema: dig it out
    for sub in error.context or []:
        if sub.validator == "enum":
            return (
                f"{sub.instance!r} is not allowed; allowed names: {', '.join(map(str, sub.validator_value))}"
            )
    return None


def validate(config: dict, schema_path: str | Path) -> dict:
    """Fill defaults into ``config`` (in place) and raise ConfigError on the first violation."""
    schema = load_schema(schema_path)
    errors = sorted(_Validator(schema).iter_errors(config), key=lambda e: (len(e.absolute_path), e.path))
    if errors:
        e = errors[0]
        msg = (_propertynames_error(e) if e.validator == "propertyNames" else None) or _explain(e)
        raise ConfigError(f"config key '{_key(e)}': {msg}")
    check_consistency(config)
    return config


@functools.lru_cache(maxsize=8)
def _parsed_schema(path: str, mtime_ns: int) -> dict:
    # parsing the schema takes ~60 ms, validating a section ~0.2 ms: section() runs per image in some
    # callers (segment.classical_mask), so it parses once per file version; it never mutates the result
    return load_schema(path)


def section(name: str, overrides: dict | None = None, schema_path: str | Path = SCHEMA) -> dict:
    """The config section ``name`` with the schema's defaults filled under ``overrides``, validated.

    Library functions called outside Snakemake (benchmarks, tests, the CLIs) get their defaults here,
    so no module restates a default. ``overrides`` is not modified; errors name the dotted key.
    """
    schema = _parsed_schema(str(schema_path), Path(schema_path).stat().st_mtime_ns)
    sub = schema["properties"].get(name)
    if sub is None:
        raise ConfigError(
            f"config section '{name}' is not in the schema; known: {', '.join(schema['properties'])}"
        )
    if "$ref" in sub:
        sub = {**schema["$defs"][sub["$ref"].split("/")[-1]], **{k: v for k, v in sub.items() if k != "$ref"}}
    wrapped = {**schema, "properties": {name: sub}, "required": [name]}
    wrapped.pop("additionalProperties", None)
    doc = {name: _unshared(overrides) if overrides is not None else {}}
    errors = sorted(_Validator(wrapped).iter_errors(doc), key=lambda e: (len(e.absolute_path), e.path))
    if errors:
        e = errors[0]
        msg = (_propertynames_error(e) if e.validator == "propertyNames" else None) or _explain(e)
        raise ConfigError(f"config key '{_key(e)}': {msg}")
    return doc[name]


def _unshared(obj):
    """A copy in which no two places hold the same dict or list, even where ``obj``'s do (deepcopy keeps
    such sharing): defaults filled into one ``{activate: false}`` must not show up in another."""
    if isinstance(obj, dict):
        return {k: _unshared(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unshared(v) for v in obj]
    return copy.deepcopy(obj)


def check_consistency(config: dict) -> None:
    """Rules the schema cannot express: cross references between sections."""
    datasets = config["datasets"]
    for role in ("finetune_datasets", "train_datasets", "test_datasets"):
        for name in config["split"][role]:
            if name not in datasets:
                raise ConfigError(
                    f"config key 'split.{role}': dataset '{name}' is not defined; "
                    f"defined: {', '.join(datasets)}"
                )
    for name, spec in datasets.items():
        frac = spec["split"]
        if frac["val"] + frac["test"] > 1.0 + 1e-9:
            raise ConfigError(
                f"config key 'datasets.{name}.split': val + test = {frac['val'] + frac['test']} > 1"
            )
        if spec["source"] == "folder" and not (spec["folder"].get("path") or spec["folder"].get("csv")):
            raise ConfigError(f"config key 'datasets.{name}.folder': source folder needs 'path' or 'csv'")
    for name in config["split"]["train_datasets"] + config["split"]["finetune_datasets"]:
        if datasets[name]["split"]["test"] >= 1.0:
            raise ConfigError(f"config key 'datasets.{name}.split.test': 1.0 leaves no training images")
    n_samplers = len(config["generate"]["samplers"])
    # from web-UI PNGs the samplers are the PNGs' and blocks without images are left out
    if config["generate"]["images_per_class"] < n_samplers and not config["generate"]["from_pngs"]:
        raise ConfigError(
            f"config key 'generate.images_per_class': {config['generate']['images_per_class']} is fewer "
            f"than the {n_samplers} samplers"
        )
    for name, s in config["generate"]["samplers"].items():
        if isinstance(s["steps"], list) and s["steps"][0] > s["steps"][1]:
            raise ConfigError(f"config key 'generate.samplers.{name}.steps': min > max in {s['steps']}")


def sampler_counts(images_per_class: int, samplers: list[str]) -> dict[str, int]:
    """Split a class's image count exactly across samplers (remainder to the first ones)."""
    base, rest = divmod(images_per_class, len(samplers))
    return {s: base + (1 if i < rest else 0) for i, s in enumerate(samplers)}


def _rows(schema: dict, defs: dict, prefix: str = ""):
    """(dotted key, type/allowed, default, description) for every key of the schema."""
    if "$ref" in schema:
        schema = {**defs[schema["$ref"].split("/")[-1]], **{k: v for k, v in schema.items() if k != "$ref"}}
    props = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    for name, sub in props.items():
        key = f"{prefix}{name}"
        merged = {**defs[sub["$ref"].split("/")[-1]], **sub} if "$ref" in sub else sub
        allowed = " \\| ".join(map(str, merged["enum"])) if "enum" in merged else merged.get("type", "")
        if "enum" in merged.get("items", {}):
            allowed = "list of " + ", ".join(merged["items"]["enum"])
        if merged.get("propertyNames", {}).get("enum"):
            allowed = "mapping, keys: " + ", ".join(merged["propertyNames"]["enum"])
        yield key, allowed, merged.get("default", ""), merged.get("description", "")
        if merged.get("properties") or isinstance(merged.get("additionalProperties"), dict):
            yield from _rows(merged, defs, key + ".")
    if isinstance(extra, dict) and ("properties" in extra or "$ref" in extra):
        yield from _rows(extra, defs, prefix + "<name>.")


def document(schema_path: str | Path) -> str:
    """config/README.md, generated from the schema so the two cannot drift apart."""
    schema = load_schema(schema_path)
    lines = [
        "# Configuration",
        "",
        "Generated from `config/schema.yaml` by",
        "`python -m dermsynth.config config/schema.yaml > config/README.md`;",
        "a test fails when the two differ. `config.yaml` is the paper's setup, `demo.yaml` the offline tiny",
        "setup. A `--configfile` replaces `config.yaml` (it is not merged into it); keys left out take the",
        "defaults below. A wrong value stops the run before any job, with one line naming the key and the",
        "allowed values.",
        "",
        "| key | allowed | default | meaning |",
        "|---|---|---|---|",
    ]
    for key, allowed, default, desc in _rows(schema, schema.get("$defs", {})):
        d = json_compact(default)
        lines.append(f"| `{key}` | {allowed} | {d} | {desc} |".replace("\n", " "))
    return "\n".join(lines) + "\n"


def json_compact(value) -> str:
    import json

    if value == "":
        return ""
    text = value if isinstance(value, str) else json.dumps(value)
    return f"`{text}`".replace("|", "\\|")


if __name__ == "__main__":
    import sys

    sys.stdout.write(document(sys.argv[1]))
