"""Breaking changes between two AsyncAPI documents that ``relaybus asyncapi`` wrote.

A change is **breaking** when a producer or a consumer built against the old document
can meet a message it cannot handle under the new one (or the other way round, during
a rolling deploy when both run):

- a channel removed, a message type removed;
- a version dropped with no upcaster chain from it to the type's newest version, or a
  version added with no upcaster from the one before (old producers' events would not
  validate);
- in a published version's payload: a field removed, a field made required or added
  as required (no default), a type changed or narrowed (``int | None`` → ``int``), an
  enum value removed, a const changed, a bound tightened (``maxLength`` down,
  ``minimum`` up, a new ``pattern``…), ``additionalProperties: false`` added.

Everything else found is listed as **additive**: new channels, types, optional fields,
versions with upcasters, widened types and bounds. ``compare`` is pure: documents in,
changes out, sorted by where they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# Bounds that narrow what a value may be when they grow (``min*``) or shrink (``max*``).
_LOWER_BOUNDS = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
_UPPER_BOUNDS = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")
# Nesting followed through $ref before a schema is declared too deep to compare.
_MAX_DEPTH = 64


@dataclass(frozen=True, order=True)
class Change:
    """One difference: ``where`` (a message id and a field path, or a channel), ``what``
    happened, and whether it breaks a producer or a consumer."""

    where: str
    what: str
    breaking: bool


class DocumentError(ValueError):
    """A document that is not one ``relaybus asyncapi`` writes (what is missing says)."""


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """Every change from ``old`` to ``new``, sorted by ``where``."""
    for doc, name in ((old, "old"), (new, "new")):
        if not isinstance(doc, dict) or not str(doc.get("asyncapi", "")).startswith("3."):
            raise DocumentError(f"the {name} document is not AsyncAPI 3")
    changes = list(_channels(old, new)) + list(_messages(old, new))
    return sorted(changes)


def _channels(old: dict[str, Any], new: dict[str, Any]) -> Iterator[Change]:
    def addresses(doc: dict[str, Any]) -> set[str]:
        out = set()
        for channel in (doc.get("channels") or {}).values():
            servers = ",".join(sorted(s.get("$ref", "") for s in channel.get("servers", [])))
            out.add(f"{servers.removeprefix('#/servers/')}:{channel.get('address')}")
        return out

    before, after = addresses(old), addresses(new)
    for gone in sorted(before - after):
        yield Change(f"channel {gone}", "channel removed", True)
    for added in sorted(after - before):
        yield Change(f"channel {added}", "channel added", False)


def _versions(doc: dict[str, Any]) -> dict[str, dict[int, dict[str, Any]]]:
    """Typed messages by type and version."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for message in ((doc.get("components") or {}).get("messages") or {}).values():
        version = message.get("x-relaybus-version")
        if isinstance(version, int) and isinstance(message.get("name"), str):
            out.setdefault(message["name"], {})[version] = message
    return out


def _upcasters(versions: dict[int, dict[str, Any]]) -> set[int]:
    found: set[int] = set()
    for message in versions.values():
        found.update(v for v in message.get("x-relaybus-upcasters", []) if isinstance(v, int))
    return found


def _messages(old: dict[str, Any], new: dict[str, Any]) -> Iterator[Change]:
    before, after = _versions(old), _versions(new)
    for type_ in sorted(set(before) | set(after)):
        if type_ not in after:
            yield Change(type_, "message type removed", True)
            continue
        if type_ not in before:
            yield Change(type_, "message type added", False)
            continue
        new_versions = after[type_]
        upcasters = _upcasters(new_versions)
        newest = max(new_versions)
        for version in sorted(before[type_]):
            where = f"{type_} v{version}"
            if version in new_versions:
                yield from _schema(
                    where,
                    _payload(old, before[type_][version]),
                    _payload(new, new_versions[version]),
                    old,
                    new,
                )
            elif all(v in upcasters for v in range(version, newest)):
                yield Change(where, f"version retired, upcast to v{newest}", False)
            else:
                missing = next(v for v in range(version, newest) if v not in upcasters)
                yield Change(
                    where, f"version dropped without an upcaster (none from v{missing})", True
                )
        for version in sorted(set(new_versions) - set(before[type_])):
            where = f"{type_} v{version}"
            older = [v for v in new_versions if v < version] + list(before[type_])
            if older and (version - 1) not in upcasters:
                yield Change(where, f"version added without an upcaster from v{version - 1}", True)
            else:
                yield Change(where, "version added", False)


def _payload(doc: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
    payload = message.get("payload")
    if not isinstance(payload, dict):
        raise DocumentError(f"message {message.get('name')!r} has no payload schema")
    return payload


def _resolve(schema: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    for _ in range(_MAX_DEPTH):
        ref = schema.get("$ref")
        if not isinstance(ref, str):
            return schema
        if not ref.startswith("#/"):
            raise DocumentError(f"only local references are compared, not {ref!r}")
        target: Any = doc
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            raise DocumentError(f"reference {ref!r} points nowhere")
        schema = target
    raise DocumentError("references nest too deep")


def _types(schema: dict[str, Any], doc: dict[str, Any]) -> frozenset[str]:
    """The JSON types a schema admits (``anyOf``/``oneOf`` members merged)."""
    options = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(options, list):
        merged: set[str] = set()
        for option in options:
            merged |= _types(_resolve(option, doc), doc)
        return frozenset(merged)
    kind = schema.get("type")
    if isinstance(kind, list):
        return frozenset(str(k) for k in kind)
    if isinstance(kind, str):
        return frozenset({"number", "integer"} if kind == "number" else {kind})
    if "properties" in schema:
        return frozenset({"object"})
    if "enum" in schema or "const" in schema:
        return frozenset({"enum"})
    return frozenset({"any"})


def _branch(schema: dict[str, Any], doc: dict[str, Any], kind: str) -> dict[str, Any]:
    """The member of an ``anyOf`` of ``kind`` (``object``, ``array``), or the schema."""
    options = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(options, list):
        for option in options:
            resolved = _resolve(option, doc)
            if kind in _types(resolved, doc):
                return resolved
    return schema


def _schema(
    where: str,
    old: dict[str, Any],
    new: dict[str, Any],
    old_doc: dict[str, Any],
    new_doc: dict[str, Any],
    depth: int = 0,
) -> Iterator[Change]:
    old, new = _resolve(old, old_doc), _resolve(new, new_doc)
    if depth > _MAX_DEPTH:
        raise DocumentError(f"{where}: schemas nest too deep")
    old_types, new_types = _types(old, old_doc), _types(new, new_doc)
    if "any" not in new_types and old_types != new_types:
        if old_types <= new_types:
            yield Change(where, f"type widened to {sorted(new_types)}", False)
        elif new_types < old_types:
            yield Change(where, f"type narrowed to {sorted(new_types)}", True)
            return
        else:
            yield Change(
                where, f"type changed from {sorted(old_types)} to {sorted(new_types)}", True
            )
            return
    yield from _constraints(where, old, new)
    if "object" in old_types and "object" in new_types:
        yield from _object(where, old, new, old_doc, new_doc, depth)
    if "array" in old_types and "array" in new_types:
        old_items = _branch(old, old_doc, "array").get("items")
        new_items = _branch(new, new_doc, "array").get("items")
        if isinstance(old_items, dict) and isinstance(new_items, dict):
            yield from _schema(f"{where}[]", old_items, new_items, old_doc, new_doc, depth + 1)


def _constraints(where: str, old: dict[str, Any], new: dict[str, Any]) -> Iterator[Change]:
    old_enum, new_enum = old.get("enum"), new.get("enum")
    if isinstance(old_enum, list) and isinstance(new_enum, list):
        removed = [v for v in old_enum if v not in new_enum]
        added = [v for v in new_enum if v not in old_enum]
        if removed:
            yield Change(where, f"enum values removed: {removed}", True)
        if added:
            yield Change(where, f"enum values added: {added}", False)
    elif new_enum is not None and old_enum is None:
        yield Change(where, "enum added", True)
    if "const" in new and old.get("const", object()) != new["const"]:
        yield Change(where, "const changed", True)
    for bound in _LOWER_BOUNDS + _UPPER_BOUNDS:
        before, after = old.get(bound), new.get(bound)
        if before == after:
            continue
        if after is None:
            yield Change(where, f"{bound} removed", False)
        elif before is None:
            yield Change(where, f"{bound} {after} added", True)
        else:
            tighter = after > before if bound in _LOWER_BOUNDS else after < before
            yield Change(where, f"{bound} {before} -> {after}", tighter)
    for keyword in ("pattern", "format"):
        before, after = old.get(keyword), new.get(keyword)
        if before != after:
            yield Change(where, f"{keyword} {before!r} -> {after!r}", after is not None)


def _object(
    where: str,
    old: dict[str, Any],
    new: dict[str, Any],
    old_doc: dict[str, Any],
    new_doc: dict[str, Any],
    depth: int,
) -> Iterator[Change]:
    old, new = _branch(old, old_doc, "object"), _branch(new, new_doc, "object")
    old_props: dict[str, Any] = old.get("properties") or {}
    new_props: dict[str, Any] = new.get("properties") or {}
    old_required = set(old.get("required") or ())
    new_required = set(new.get("required") or ())
    for name in sorted(set(old_props) | set(new_props)):
        path = f"{where}: {name}" if depth == 0 else f"{where}.{name}"
        if name not in new_props:
            yield Change(path, "field removed", True)
        elif name not in old_props:
            if name in new_required:
                yield Change(path, "required field added (no default)", True)
            else:
                yield Change(path, "optional field added", False)
        else:
            if name in new_required and name not in old_required:
                yield Change(path, "field made required", True)
            elif name in old_required and name not in new_required:
                yield Change(path, "field made optional", False)
            yield from _schema(path, old_props[name], new_props[name], old_doc, new_doc, depth + 1)
    if old.get("additionalProperties") is not False and new.get("additionalProperties") is False:
        yield Change(where, "additionalProperties: false added (unknown fields refused)", True)
