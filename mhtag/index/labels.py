"""Labels that reach the index from a program or a person (uploads, corrections): typed and checked against each
attribute's kind and vocabulary before anything is stored, so that a client can never add a stray value (`5`,
`"True"`, `"a|b"` into a single-label attribute) to the catalogue's vocabulary by accident."""

from __future__ import annotations

import copy
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from mhtag.core.errors import MhtagError
from mhtag.data.schema import TAG_SEP, AttributeKind, check_distinct_columns, encode_tags
from mhtag.index.columns import StoredAttribute
from mhtag.index.meta import IndexMeta

MAX_LABEL_CHARS = 200
SHOWN_VALUES = 40


class InvalidLabel(MhtagError):
    """A label the attribute cannot take: wrong type, outside the vocabulary, or not a clean value."""


@dataclass
class CheckedLabels:
    """Labels in the form the table stores (`""` clears; tags as `|a|b|`), and what they add to the vocabulary."""

    stored: dict[str, str] = field(default_factory=dict)  # attribute -> stored cell
    new_values: dict[str, list[str]] = field(default_factory=dict)  # attribute -> values it never had
    new_attributes: dict[str, AttributeKind] = field(default_factory=dict)  # attributes the index did not have

    def applied_to(self, meta: IndexMeta) -> IndexMeta:
        """`meta` with these labels' attributes labelled and their new values and attributes in the vocabulary."""
        attributes = [copy.copy(a) for a in meta.attributes]
        attributes += [StoredAttribute(name, kind) for name, kind in self.new_attributes.items()]
        for a in attributes:
            if a.name in self.stored:
                a.has_labels = True
                a.label_values = sorted(set(a.label_values) | set(self.new_values.get(a.name, [])))
        check_distinct_columns([a.name for a in attributes], "index")
        return replace(meta, attributes=attributes)


def vocabulary(a: StoredAttribute) -> list[str]:
    """Every value the attribute knows: its head's classes and the labels the index holds."""
    return sorted(set(a.classes) | set(a.label_values))


def _clean(a: StoredAttribute, value: Any) -> str:
    if not isinstance(value, str):
        kind = "a list of tags" if a.multi else "a string"
        raise InvalidLabel(f"{a.name}: expected {kind} (or null to clear), not {type(value).__name__} {value!r}")
    text = value.strip()
    if not text:
        raise InvalidLabel(f"{a.name}: an empty label; send null to clear it")
    if TAG_SEP in text:
        raise InvalidLabel(f"{a.name}: {value!r} holds '{TAG_SEP}', which separates tags" +
                           ("; send the tags as a list" if a.multi else "; a single-label attribute takes one value"))
    if len(text) > MAX_LABEL_CHARS or any(unicodedata.category(c)[0] == "C" for c in text):
        raise InvalidLabel(f"{a.name}: {value[:60]!r} is not a label (control characters, or over "
                           f"{MAX_LABEL_CHARS} characters)")
    return text


def _canonical(a: StoredAttribute, text: str, known: dict[str, str], add_values: bool, out: CheckedLabels) -> str:
    """The vocabulary's own spelling of `text` (matched case-insensitively), or `text` as a new value when the
    client asked to add values; otherwise refused with the valid values."""
    if text.lower() in known:
        return known[text.lower()]
    if not add_values:
        values = vocabulary(a)
        shown = ", ".join(values[:SHOWN_VALUES]) + (" ..." if len(values) > SHOWN_VALUES else "")
        raise InvalidLabel(f"{a.name}: {text!r} is not one of its values ({shown or 'none yet'}); to add a new "
                           'value on purpose, send "add_values": true')
    out.new_values.setdefault(a.name, []).append(text)
    known[text.lower()] = text
    return text


def checked_labels(meta: IndexMeta, given: Mapping[str, Any], add_values: bool = False) -> CheckedLabels:
    """`{attribute: value}` from a client, where a value is a string (a single-label attribute), a list of strings
    (a tag group) or None (clear), checked against the index: attributes by name, values against the vocabulary
    (case-insensitive) unless `add_values`. Raises `InvalidLabel` naming the attribute and the valid values."""
    if not isinstance(given, Mapping):
        raise InvalidLabel(f"labels must be an object of attribute: value, not {type(given).__name__}")
    out = CheckedLabels()
    for name, value in given.items():
        a = meta.find_attribute(str(name)) if isinstance(name, str) else None
        if a is None:
            a = _new_attribute(meta, name, value, add_values)
            out.new_attributes[a.name] = a.kind
        known = {v.lower(): v for v in vocabulary(a)}
        if value is None:
            out.stored[a.name] = ""
        elif a.multi:
            if not isinstance(value, list):
                raise InvalidLabel(f"{a.name}: a tag group takes a list of tags (or null), not {value!r}")
            tags = {_canonical(a, _clean(a, v), known, add_values, out) for v in value}
            out.stored[a.name] = encode_tags(sorted(tags))
        else:
            out.stored[a.name] = _canonical(a, _clean(a, value), known, add_values, out)
    return out


def _new_attribute(meta: IndexMeta, name: object, value: Any, add_values: bool) -> StoredAttribute:
    """An attribute the index does not have, added on purpose (`add_values`): a tag group when its value is a
    list of tags, else single-label."""
    if not add_values or not isinstance(name, str) or not name.strip() or value is None:
        raise InvalidLabel(f"unknown attribute {name!r}; this index has: "
                           f"{', '.join(x.name for x in meta.attributes) or 'none yet'} (to add an attribute on "
                           'purpose, send a value with "add_values": true)')
    kind = AttributeKind.MULTI if isinstance(value, list) else AttributeKind.SINGLE
    return StoredAttribute(_clean(StoredAttribute(name, kind), name), kind)
