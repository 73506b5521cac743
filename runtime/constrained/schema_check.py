"""Honest JSON-schema support: find the keywords a backend would silently ignore.

`schema_features(schema)` walks a schema (all subschemas, `$defs`/`definitions`, and
every local `$ref` target wherever it lives) and returns the set of *features* it
uses: standard validation keywords by name (`minLength`, `uniqueItems`, ...), plus
refined features where support differs by value:
    "format:<name>"   a `format` value (backends enforce only some formats)
    "items:array"     draft-7 tuple form `items: [..]`
    "$ref:remote"     a `$ref` that is not a local "#..." pointer
    "oneOf:overlapping"   a oneOf whose branches are not provably disjoint (compiled as
                      anyOf, a backend would accept instances matching two branches)
    "pattern+length"  pattern together with minLength/maxLength on one string
    "format+pattern" / "format+length"  format together with a pattern / a length
                      (outlines-core keeps only one of them)
    "pattern:lookaround"  a pattern (or patternProperties key) with (?= (?! (?<= (?<!
    "multipleOf:number" / "multipleOf+range"  multipleOf on non-integers / with bounds
    "anyOf+siblings" / "oneOf+siblings" / "$ref+siblings"  the applicator next to other
                      validation keywords in the same schema (they must all hold)
    "$ref:anchor"     a "#name" reference (not a "#/json/pointer")
    "untyped-constraint"  string/number/array/object keywords with no "type" (nor a keyword
                      that implies it, like properties or items)
    "enum+constraint" enum/const next to keywords that filter its values
    "enum+type"       enum/const values that the schema's own "type" excludes
Annotation keywords (title, description, default, examples, ...) and non-standard
keys (`x-...`, `javaType`, ...) carry no validation meaning and are never features.

`check_schema` (called by backends before compiling) raises GrammarError for a
malformed schema, and, when strict, for features outside the backend's supported set
(listing them), so a constraint is never silently weaker than the user asked.
"""

from __future__ import annotations

from typing import Any, Iterable

from runtime.constrained.base import GrammarError, InvalidSchemaError, UnsupportedSchemaError

# keyword -> how its value holds subschemas
_SUB_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SUB_LIST = ("allOf", "anyOf", "oneOf", "prefixItems")
_SUB_ONE = ("additionalProperties", "additionalItems", "contains", "not", "if", "then", "else",
            "propertyNames", "unevaluatedItems", "unevaluatedProperties", "contentSchema")

VALIDATION_KEYWORDS = frozenset({
    # applicators
    "properties", "patternProperties", "additionalProperties", "propertyNames", "allOf", "anyOf",
    "oneOf", "not", "if", "then", "else", "dependentSchemas", "dependencies", "prefixItems", "items",
    "additionalItems", "contains", "unevaluatedItems", "unevaluatedProperties",
    # validation
    "type", "enum", "const", "multipleOf", "maximum", "exclusiveMaximum", "minimum",
    "exclusiveMinimum", "maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems",
    "maxContains", "minContains", "maxProperties", "minProperties", "required", "dependentRequired",
    "format",
    # references
    "$ref", "$dynamicRef", "$recursiveRef",
})
# Carry no constraint on the instance (or only structure the walker already follows).
ANNOTATIONS = frozenset({
    "$schema", "$id", "id", "$anchor", "$dynamicAnchor", "$recursiveAnchor", "$vocabulary", "$comment",
    "$defs", "definitions", "title", "description", "default", "examples", "deprecated", "readOnly",
    "writeOnly", "contentEncoding", "contentMediaType", "contentSchema",
})


def schema_features(schema: Any) -> set[str]:
    features: set[str] = set()
    _walk(schema, features, schema)
    return features


_STRING_KW = {"pattern", "minLength", "maxLength", "format"}
_NUMBER_KW = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}
_ARRAY_KW = {"minItems", "maxItems", "uniqueItems", "contains", "minContains", "maxContains"}
_OBJECT_KW = {"required", "minProperties", "maxProperties", "propertyNames", "dependentRequired"}
_IMPLY_ARRAY = {"items", "prefixItems", "additionalItems"}
_IMPLY_OBJECT = {"properties", "additionalProperties", "patternProperties"}


def _node_features(node: dict, out: set[str]) -> None:
    """Features that come from keyword combinations within one schema object."""
    keys = set(node) & VALIDATION_KEYWORDS
    required, props = node.get("required"), node.get("properties")
    if isinstance(required, list) and isinstance(props, dict) and "patternProperties" not in node \
            and set(required) - set(props):
        # closed the way backends close objects, no instance could satisfy it; left
        # open, xgrammar still generates only the listed properties
        out.add("required-unlisted")
    for applicator in ("anyOf", "oneOf", "$ref"):
        if applicator in keys and keys - {applicator}:
            out.add(f"{applicator}+siblings")
    if "enum" in keys or "const" in keys:
        if keys & (_STRING_KW | _NUMBER_KW | _ARRAY_KW | _OBJECT_KW):
            out.add("enum+constraint")
        if "type" in keys and not _values_fit_type(node):
            out.add("enum+type")
    elif "type" not in keys:
        untyped = (keys & (_STRING_KW | _NUMBER_KW)) or (keys & _ARRAY_KW and not keys & _IMPLY_ARRAY) \
            or (keys & _OBJECT_KW and not keys & _IMPLY_OBJECT)
        if untyped:
            out.add("untyped-constraint")


def _values_fit_type(node: dict) -> bool:
    """Whether every enum/const value has one of the node's declared types."""
    types = node["type"] if isinstance(node["type"], list) else [node["type"]]
    values = [node["const"]] if "const" in node else node.get("enum")
    if not isinstance(values, list):
        return True  # malformed: validate_schema reports it
    return all(any(_has_type(v, t) for t in types) for v in values)


def _has_type(value: Any, json_type: Any) -> bool:
    if json_type == "integer":
        return _type_of(value) == "number" and float(value).is_integer()
    return _type_of(value) == json_type


def _walk(node: Any, out: set[str], root: Any, seen: set[int] | None = None) -> None:
    """Collect features of `node` and its subschemas; local $ref targets are walked
    too (once each), wherever in the document they live."""
    if not isinstance(node, dict):
        return  # boolean schema (or malformed: check_schema reports that)
    seen = set() if seen is None else seen
    if id(node) in seen:
        return
    seen.add(id(node))
    _node_features(node, out)
    for key, value in node.items():
        if key in ANNOTATIONS and key not in ("$defs", "definitions"):
            continue
        if key == "oneOf" and isinstance(value, list):
            # backends compile oneOf as anyOf: exact only when no instance fits two branches
            out.add("oneOf" if _pairwise_disjoint(value, root) else "oneOf:overlapping")
        elif key == "format":
            out.add(f"format:{value}")
            if "pattern" in node:
                out.add("format+pattern")
            if "minLength" in node or "maxLength" in node:
                out.add("format+length")
        elif key == "pattern":
            out.add("pattern")
            if "minLength" in node or "maxLength" in node:
                out.add("pattern+length")
            if has_lookaround(value):
                out.add("pattern:lookaround")
        elif key == "multipleOf":
            out.add("multipleOf")
            if node.get("type") != "integer" or not float(value).is_integer():
                out.add("multipleOf:number")
            if any(k in node for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")):
                out.add("multipleOf+range")
        elif key == "items" and isinstance(value, list):
            out.add("items:array")
        elif key == "$ref":
            local = isinstance(value, str) and value.startswith("#")
            pointer = local and (value == "#" or value.startswith("#/"))
            out.add("$ref" if pointer else "$ref:anchor" if local else "$ref:remote")
            target = _resolve(node, root) if pointer else node
            if target is not node:  # resolved (an unresolvable pointer returns node itself)
                _walk(target, out, root, seen)
        elif key in VALIDATION_KEYWORDS:
            out.add(key)
            if key == "patternProperties" and isinstance(value, dict) and any(map(has_lookaround, value)):
                out.add("pattern:lookaround")
        # follow subschemas
        if key in _SUB_MAP and isinstance(value, dict):
            for sub in value.values():
                _walk(sub, out, root, seen)
        elif key in _SUB_LIST and isinstance(value, list):
            for sub in value:
                _walk(sub, out, root, seen)
        elif key == "propertyNames" and isinstance(value, dict):
            _walk({"type": "string", **value}, out, root, seen)  # names are strings
        elif key in _SUB_ONE or key == "items":
            for sub in value if isinstance(value, list) else [value]:
                _walk(sub, out, root, seen)
        elif key == "dependencies" and isinstance(value, dict):
            for sub in value.values():
                _walk(sub, out, root, seen)


def map_subschemas(node: Any, fn) -> Any:
    """Copy of schema `node` with `fn` applied to each of its direct subschemas."""
    if not isinstance(node, dict):
        return node
    out = dict(node)
    for key, value in node.items():
        if key in _SUB_MAP and isinstance(value, dict):
            out[key] = {k: fn(v) for k, v in value.items()}
        elif key in _SUB_LIST + ("items",) and isinstance(value, list):
            out[key] = [fn(v) for v in value]
        elif key in _SUB_ONE + ("items",) and isinstance(value, (dict, bool)):
            out[key] = fn(value)
    return out


def is_unconstrained(node: Any) -> bool:
    """A subschema that admits any JSON value: `{}`, `true`, or annotations only."""
    return node is True or (isinstance(node, dict) and not (set(node) & VALIDATION_KEYWORDS))


def has_lookaround(pattern: Any) -> bool:
    return isinstance(pattern, str) and any(s in pattern for s in ("(?=", "(?!", "(?<=", "(?<!"))


# ---------------------------------------------------------------------- oneOf disjointness
_JSON_TYPES = ("null", "boolean", "object", "array", "number", "string")


def _resolve(node: Any, root: Any, depth: int = 0) -> Any:
    """Follow a local "#/a/b" $ref (a few levels deep); anything else is returned as is."""
    while isinstance(node, dict) and isinstance(node.get("$ref"), str) and depth < 8:
        ref = node["$ref"]
        if not ref.startswith("#"):
            return node
        target = root
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                return node
            target = target[part]
        node, depth = target, depth + 1
    return node


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {dict: "object", list: "array", str: "string"}.get(type(value), "?")


def _values(node: dict) -> set[str] | None:
    """The instance values a schema admits, as canonical JSON, if it is a const/enum."""
    import json

    if "const" in node:
        return {json.dumps(node["const"], sort_keys=True)}
    if isinstance(node.get("enum"), list):
        return {json.dumps(v, sort_keys=True) for v in node["enum"]}
    return None


def _types(node: dict) -> set[str] | None:
    """JSON types a schema admits ("integer" counted as "number"), None if unknown."""
    t = node.get("type")
    if isinstance(t, str):
        t = [t]
    if isinstance(t, list):
        return {"number" if x == "integer" else x for x in t}
    values = _values(node)
    if values is not None:
        import json

        return {_type_of(json.loads(v)) for v in values}
    return None


def _disjoint(a: Any, b: Any, root: Any) -> bool:
    a, b = _resolve(a, root), _resolve(b, root)
    if not isinstance(a, dict) or not isinstance(b, dict):
        return False
    ta, tb = _types(a), _types(b)
    if ta is not None and tb is not None and not (ta & tb):
        return True
    va, vb = _values(a), _values(b)
    if va is not None and vb is not None and not (va & vb):
        return True
    # objects told apart by a required property with different constant values
    req = set(a.get("required") or []) & set(b.get("required") or [])
    pa, pb = a.get("properties") or {}, b.get("properties") or {}
    for name in req:
        sa, sb = _resolve(pa.get(name), root), _resolve(pb.get(name), root)
        if isinstance(sa, dict) and isinstance(sb, dict):
            va, vb = _values(sa), _values(sb)
            if va is not None and vb is not None and not (va & vb):
                return True
    return False


def _pairwise_disjoint(branches: list, root: Any) -> bool:
    return all(_disjoint(branches[i], branches[j], root)
               for i in range(len(branches)) for j in range(i + 1, len(branches)))


def unsupported_features(schema: Any, supported: Iterable[str]) -> list[str]:
    """Features of `schema` outside `supported` (entries may be "format:*" for every format)."""
    supported = frozenset(supported)
    missing = []
    for f in sorted(schema_features(schema)):
        if f in supported or (f.startswith("format:") and "format:*" in supported):
            continue
        missing.append(f)
    return missing


def validate_schema(schema: Any) -> None:
    """GrammarError if `schema` is not a valid JSON schema (against its draft's metaschema)."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise GrammarError("a JSON schema must be an object or a boolean")
    try:
        import jsonschema
    except ImportError:  # optional: without it only the backends' own checks run
        return
    # without "$schema", accept any of the drafts real-world schemas are written in
    drafts = ([jsonschema.validators.validator_for(schema)] if "$schema" in schema else
              [jsonschema.Draft202012Validator, jsonschema.Draft7Validator, jsonschema.Draft4Validator])
    first_error = None
    for cls in drafts:
        try:
            cls.check_schema(schema)
            return
        except jsonschema.SchemaError as e:
            first_error = first_error or e
    path = "/".join(str(p) for p in first_error.absolute_path) or "(root)"
    raise InvalidSchemaError(f"invalid JSON schema at {path}: {first_error.message}")


def check_schema(schema: Any, backend: str, supported: Iterable[str], strict: bool) -> None:
    validate_schema(schema)
    if not strict:
        return
    missing = unsupported_features(schema, supported)
    if missing:
        raise UnsupportedSchemaError(
            f"JSON schema uses features the {backend} grammar backend cannot enforce: "
            f"{', '.join(missing)} (set strict=False to ignore them, or choose another backend)")


# Keywords that add properties from elsewhere: closing an object next to them would
# reject instances the schema allows, so schemas using them are left open.
_OPENING = ("allOf", "if", "dependentSchemas", "dependencies", "unevaluatedProperties", "$dynamicRef",
            "$recursiveRef")


def close_objects(schema: Any) -> Any:
    """Copy of `schema` where objects that list `properties` and say nothing about other
    properties get `additionalProperties: false`: the grammar then generates only the
    listed properties (as xgrammar's strict mode and outlines do, and as OpenAI's
    structured outputs require). Left unchanged when the schema composes objects
    (allOf, if/then, dependentSchemas, ...), where closing would be wrong."""
    if _uses_any(schema, _OPENING):
        return schema
    return _close(schema)


def _uses_any(node: Any, keys: tuple[str, ...]) -> bool:
    if isinstance(node, dict):
        return any(k in node for k in keys) or any(_uses_any(v, keys) for v in node.values())
    if isinstance(node, list):
        return any(_uses_any(v, keys) for v in node)
    return False


def _close(node: Any) -> Any:
    if isinstance(node, list):
        return [_close(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: (_close(v) if k not in ("enum", "const", "default", "examples") else v) for k, v in node.items()}
    props, required = out.get("properties"), out.get("required")
    listed = isinstance(props, dict) and (not isinstance(required, list) or set(required) <= set(props))
    if listed and not any(k in out for k in ("additionalProperties", "patternProperties")):
        out["additionalProperties"] = False  # (a required name not in properties keeps it open)
    return out
