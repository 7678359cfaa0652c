"""RouteMatch → meshlib ``match``, and header edits (``*_headers_to_add/_remove``) → meshlib ``headers``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from meshlib._xds.translate_common import At, check_re2, fraction_percent

__all__ = ["PathMatch", "header_edits", "route_match"]


@dataclass(frozen=True)
class PathMatch:
    """How the route's path was matched: what ``prefix_rewrite`` can work with."""

    kind: str  # prefix, path, regex, none
    value: str = ""


@dataclass
class _Match:
    fields: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, Any] = field(default_factory=dict)
    header_at: dict[str, At] = field(default_factory=dict)


def _string_match(matcher: Any, at: At) -> dict[str, str]:
    """A StringMatcher → a meshlib value match (exact, prefix, regex: a full match, as Envoy's)."""
    which = matcher.WhichOneof("match_pattern")
    ignore_case = bool(matcher.ignore_case)
    if which == "exact":
        return {"regex": "(?i)" + re.escape(matcher.exact)} if ignore_case else {"exact": str(matcher.exact)}
    if which == "prefix":
        if ignore_case:
            return {"regex": f"(?is){re.escape(matcher.prefix)}.*"}
        return {"prefix": str(matcher.prefix)}
    if which == "suffix":
        return {"regex": f"(?s{'i' if ignore_case else ''}).*{re.escape(matcher.suffix)}"}
    if which == "contains":
        return {"regex": f"(?s{'i' if ignore_case else ''}).*{re.escape(matcher.contains)}.*"}
    if which == "safe_regex":  # ignore_case has no effect on safe_regex (Envoy)
        return {"regex": check_re2(matcher.safe_regex.regex, at / "safe_regex" / "regex")}
    (at / (which or "match_pattern")).reject("not supported: use exact, prefix, suffix, contains or safe_regex")


def _value_matches(match: dict[str, Any], value: str | None) -> bool:
    """Whether a meshlib value match (as translated here) holds for ``value`` (None: absent)."""
    if "present" in match:
        return value is not None
    if "absent" in match:
        return value is None
    if value is None:
        return False
    if "exact" in match:
        return bool(value == match["exact"])
    if "prefix" in match:
        return value.startswith(match["prefix"])
    return re.fullmatch(match["regex"], value) is not None


def _header_matcher(matcher: Any, at: At) -> dict[str, Any]:
    """A HeaderMatcher → a meshlib value match (present / absent included)."""
    which = matcher.WhichOneof("header_match_specifier")
    if matcher.treat_missing_header_as_empty:
        (at / "treat_missing_header_as_empty").reject("not supported")
    if which is None or which == "present_match":
        present = True if which is None else bool(matcher.present_match)
        if matcher.invert_match:
            present = not present
        return {"present": True} if present else {"absent": True}
    if matcher.invert_match:
        (at / "invert_match").reject("meshlib can't invert a value match (only present_match)")
    if which == "range_match":
        (at / "range_match").reject("range matches are not supported")
    if which == "string_match":
        return _string_match(matcher.string_match, at / "string_match")
    if which == "safe_regex_match":
        return {"regex": check_re2(matcher.safe_regex_match.regex, at / "safe_regex_match" / "regex")}
    value = str(getattr(matcher, which))
    # The deprecated exact_match, prefix_match, suffix_match, contains_match.
    kind = which.removesuffix("_match")
    return {"exact": value} if kind == "exact" else _string_match(_Literal(kind, value), at / which)


class _Literal:
    """A StringMatcher look-alike for the deprecated HeaderMatcher fields."""

    ignore_case = False

    def __init__(self, kind: str, value: str) -> None:
        self.kind = kind
        setattr(self, kind, value)

    def WhichOneof(self, _: str) -> str:  # noqa: N802 - the protobuf method's name
        return self.kind


def _add_header(match: _Match, name: str, value: dict[str, Any], at: At) -> None:
    if name in match.headers:
        at.reject(f"header {name!r} is matched twice in this route: meshlib matches each header once")
    match.headers[name] = value
    match.header_at[name] = at


def route_match(rm: Any, at: At, authority: str) -> tuple[dict[str, Any], PathMatch] | None:
    """The meshlib ``match`` (without host and authority) of a RouteMatch; None when it can never match.

    ``authority`` is the listener's: ``:authority`` matchers are decided here, once.
    """
    for name in ("connect_matcher", "path_match_policy"):
        if rm.HasField(name):
            (at / name).reject("not supported")
    if rm.dynamic_metadata:
        (at / "dynamic_metadata").reject("not supported")
    if rm.filter_state:
        (at / "filter_state").reject("not supported")
    match = _Match()
    sensitive = rm.case_sensitive.value if rm.HasField("case_sensitive") else True
    which = rm.WhichOneof("path_specifier")
    path = PathMatch("none")
    if which == "prefix":
        prefix = str(rm.prefix)
        if prefix and not prefix.startswith("/"):
            return None  # a request path always starts with /
        if "?" in prefix or "#" in prefix:
            (at / "prefix").reject("a prefix with '?' or '#' is not supported (meshlib matches the path only)")
        if not sensitive:
            match.fields["path_regex"] = f"(?is){re.escape(prefix)}.*"
            path = PathMatch("regex")
        elif prefix not in ("", "/"):
            match.fields["path_prefix"] = prefix
            path = PathMatch("prefix", prefix)
        else:
            path = PathMatch("prefix", prefix)
    elif which == "path":
        exact = str(rm.path)
        if not exact.startswith("/"):
            return None
        if sensitive:
            match.fields["path"] = exact
            path = PathMatch("path", exact)
        else:
            match.fields["path_regex"] = "(?i)" + re.escape(exact)
            path = PathMatch("regex")
    elif which == "safe_regex":
        match.fields["path_regex"] = check_re2(rm.safe_regex.regex, at / "safe_regex" / "regex")
        path = PathMatch("regex")
    elif which == "path_separated_prefix":
        separated = str(rm.path_separated_prefix)
        flags = "(?s)" if sensitive else "(?is)"
        match.fields["path_regex"] = f"{flags}{re.escape(separated)}(?:/.*)?"
        path = PathMatch("regex")
    if rm.HasField("runtime_fraction"):
        percent = fraction_percent(rm.runtime_fraction.default_value)
        if percent < 100:
            match.fields["percent"] = percent
    if rm.HasField("tls_context"):
        tls = rm.tls_context
        # meshlib's callers speak plain HTTP to it: no client certificate is ever presented or validated.
        if (tls.HasField("presented") and tls.presented.value) or (tls.HasField("validated") and tls.validated.value):
            return None
    for i, matcher in enumerate(rm.headers):
        hat = at / "headers" / i
        name = str(matcher.name).lower()
        value = _header_matcher(matcher, hat)
        if name == ":authority":
            if not _value_matches(value, authority):
                return None
            continue
        if name == ":method":
            if "present" in value:
                continue
            if "absent" in value:
                return None
            methods = _method(value, hat)
            if not methods:
                return None
            if "method" in match.fields:
                hat.reject("':method' is matched twice in this route")
            match.fields["method"] = methods
            continue
        if name.startswith(":") or name == "host":
            (hat / "name").reject(f"matching {name!r} is not supported (':authority' and ':method' are)")
        _add_header(match, name, value, hat)
    if rm.HasField("grpc"):
        _add_header(match, "content-type", {"prefix": "application/grpc"}, at / "grpc")
    query: dict[str, Any] = {}
    for i, qm in enumerate(rm.query_parameters):
        qat = at / "query_parameters" / i
        name = str(qm.name)
        if name in query:
            qat.reject(f"query parameter {name!r} is matched twice in this route")
        if qm.WhichOneof("query_parameter_match_specifier") == "string_match":
            query[name] = _string_match(qm.string_match, qat / "string_match")
        else:  # present_match, or nothing: the parameter must be there (Envoy)
            query[name] = {"present": True}
    if match.headers:
        match.fields["headers"] = match.headers
    if query:
        match.fields["query"] = query
    return match.fields, path


_METHOD = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _method(value: dict[str, Any], at: At) -> list[str]:
    """A ``:method`` value match → the methods it allows ([] for none)."""
    if "exact" in value:
        method = value["exact"]
        # Methods are case-sensitive (RFC 9110) and meshlib upper-cases them: 'get' never matches a GET.
        return [method] if _METHOD.match(method) and method == method.upper() else []
    regex = value.get("regex", "")
    literal = re.fullmatch(r"\(\?i\)((?:[A-Za-z]|\\-)+)", regex)
    if literal is not None:
        return [literal.group(1).replace("\\", "").upper()]
    at.reject("only an exact (or ignore_case exact) ':method' match is supported")


# ---------------------------------------------------------------------------------------------------- edits

# HeaderAppendAction: APPEND_IF_EXISTS_OR_ADD 0, ADD_IF_ABSENT 1, OVERWRITE_IF_EXISTS_OR_ADD 2, OVERWRITE_IF_EXISTS 3.
_APPEND, _OVERWRITE = 0, 2


def _literal_value(text: str, at: At) -> str:
    """A header value without Envoy's %COMMAND% formatting: ``%%`` is ``%``, any other ``%`` is Rejected."""
    out = []
    i = 0
    while i < len(text):
        if text[i] == "%":
            if text[i + 1 : i + 2] != "%":
                at.reject(f"{text!r}: Envoy's %COMMAND% substitutions are not supported (write %% for %)")
            out.append("%")
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _edited_name(name: str, at: At) -> str:
    name = name.lower()
    if name.startswith(":") or name == "host":
        at.reject(f"{name!r} can't be edited (Envoy refuses it too): use host_rewrite_literal for the host")
    return name


@dataclass
class _HeaderState:
    base: tuple[str, str] | None = None  # ("remove", "") or ("set", value); None: the request's own
    adds: list[tuple[str, At]] = field(default_factory=list)


def _apply_level(
    states: dict[str, _HeaderState], to_add: Sequence[Any], to_remove: Sequence[str], at: At, which: str
) -> None:
    """One level's edits, as Envoy's HeaderParser runs them: removes, then overwrites, then appends."""
    for i, name in enumerate(to_remove):
        key = _edited_name(name, at / f"{which}_headers_to_remove" / i)
        states[key] = _HeaderState(("remove", ""))
    appends: list[tuple[str, str, At]] = []
    for i, option in enumerate(to_add):
        oat = at / f"{which}_headers_to_add" / i
        header = option.header
        key = _edited_name(header.key, oat / "header" / "key")
        if header.raw_value:
            try:
                raw = bytes(header.raw_value).decode("utf-8")
            except UnicodeDecodeError:
                (oat / "header" / "raw_value").reject("not UTF-8")
            value = _literal_value(raw, oat / "header" / "raw_value")
        else:
            value = _literal_value(header.value, oat / "header" / "value")
        if option.HasField("append"):
            if option.append_action != _APPEND:
                (oat / "append").reject("set append or append_action, not both (Envoy refuses it too)")
            action = _APPEND if option.append.value else _OVERWRITE
        else:
            action = int(option.append_action)
        if action not in (_APPEND, _OVERWRITE):
            (oat / "append_action").reject("only APPEND_IF_EXISTS_OR_ADD and OVERWRITE_IF_EXISTS_OR_ADD are supported")
        if not value and not option.keep_empty_value:
            continue  # Envoy drops an empty value unless keep_empty_value
        if action == _OVERWRITE:
            states[key] = _HeaderState(("set", value))
        else:
            appends.append((key, value, oat))
    for key, value, oat in appends:
        states.setdefault(key, _HeaderState()).adds.append((value, oat))


def _ops(states: dict[str, _HeaderState]) -> dict[str, Any]:
    ops: dict[str, Any] = {}
    for name, state in states.items():
        if len(state.adds) > 1:
            state.adds[1][1].reject(f"header {name!r} is appended twice: meshlib adds one value per header")
        add = state.adds[0][0] if state.adds else None
        if state.base is None:
            if add is not None:
                ops.setdefault("add", {})[name] = add
        elif state.base[0] == "remove":
            if add is None:
                ops.setdefault("remove", []).append(name)
            else:
                ops.setdefault("set", {})[name] = add
        else:
            ops.setdefault("set", {})[name] = state.base[1]
            if add is not None:
                ops.setdefault("add", {})[name] = add
    return ops


def header_edits(levels: Sequence[tuple[Any, At]]) -> dict[str, Any] | None:
    """meshlib ``headers`` from the header edits of ``levels`` (messages with *_headers_to_add/_remove), in order.

    Envoy applies the route's edits, then the virtual host's, then the route configuration's (the later one
    wins on the same header), or the reverse with most_specific_header_mutations_wins: pass them in that order.
    """
    result: dict[str, Any] = {}
    for which in ("request", "response"):
        states: dict[str, _HeaderState] = {}
        for message, at in levels:
            _apply_level(
                states,
                getattr(message, f"{which}_headers_to_add"),
                getattr(message, f"{which}_headers_to_remove"),
                at,
                which,
            )
        ops = _ops(states)
        if ops:
            result[which] = ops
    return result or None
