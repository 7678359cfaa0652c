"""Inbound authorization (``inbound.authorization``, Istio's AuthorizationPolicy), compiled into predicates.

Istio's semantics: deny policies first (any match → 403); then, if any allow
policy exists, the request must match one (an allow policy without rules
matches nothing); no policy at all allows everything. A rule matches when
some ``from`` source, some ``to`` operation and every ``when`` condition
match; within a source or operation every field set must match (each an OR
of patterns), and a ``not_*`` field matches when none of its patterns does.
Patterns are exact, prefix ``abc*``, suffix ``*abc`` or presence ``*``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from meshlib._config.security import (
    AuthorizationPolicyConfig,
    ConditionConfig,
    OperationConfig,
    RuleConfig,
    SourceConfig,
)
from meshlib._engine.inbound_context import FORBIDDEN, Denial, InboundContext, spiffe_namespace

__all__ = ["AuthzFilter", "CompiledPolicy", "IpMatch", "compile_policies", "normal_host"]

Predicate = Callable[[InboundContext], bool]
_IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class StringMatch:
    """An OR of Istio string patterns: exact, ``prefix*``, ``*suffix``, ``*``; None never matches."""

    __slots__ = ("exact", "prefixes", "presence", "suffixes")

    def __init__(
        self, patterns: Iterable[str], transform: Callable[[str], str] = str, suffix: Callable[[str], str] = str
    ) -> None:
        exact: set[str] = set()
        prefixes: list[str] = []
        suffixes: list[str] = []
        presence = False
        for raw in patterns:
            if raw == "*":
                presence = True
            elif raw.endswith("*"):
                prefixes.append(transform(raw[:-1]))
            elif raw.startswith("*"):
                suffixes.append(suffix(raw[1:]))
            else:
                exact.add(transform(raw))
        self.exact = frozenset(exact)
        self.prefixes = tuple(prefixes)
        self.suffixes = tuple(suffixes)
        self.presence = presence

    def __call__(self, value: str | None) -> bool:
        if value is None:
            return False
        if self.presence:
            return value != ""
        return value in self.exact or value.startswith(self.prefixes) or value.endswith(self.suffixes)

    def any(self, values: Iterable[str]) -> bool:
        for value in values:  # noqa: SIM110 - loops, not any(genexpr): this runs per request
            if self(value):
                return True
        return False


def _principal(pattern: str) -> str:
    # Istio writes principals without the scheme ("cluster.local/ns/default/sa/sleep"); meshlib also takes
    # the SPIFFE ID as written in a certificate. Both are matched against the full spiffe:// form.
    return pattern if pattern.startswith("spiffe://") else "spiffe://" + pattern


def _lower_host(pattern: str) -> str:
    return pattern.lower().rstrip(".") if pattern != "*" else pattern


_SEEN_ADDRESSES = 4096  # per ip_blocks matcher; cleared when full


class IpMatch:
    """Whether an address is in any of the blocks (IPv4-mapped IPv6 addresses count as IPv4)."""

    __slots__ = ("_seen", "networks")

    def __init__(self, blocks: Iterable[str]) -> None:
        self.networks: tuple[_IpNetwork, ...] = tuple(ipaddress.ip_network(b, strict=False) for b in blocks)
        # A workload sees few distinct callers: parsing each address once keeps ip_blocks off the per-request bill.
        self._seen: dict[str, bool] = {}

    def __call__(self, address: str | None) -> bool:
        if address is None:
            return False
        seen = self._seen.get(address)
        if seen is None:
            if len(self._seen) >= _SEEN_ADDRESSES:
                self._seen.clear()
            seen = self._seen[address] = self._match(address)
        return seen

    def _match(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.partition("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1 (a dual-stack socket's view of an IPv4 peer)
        return any(ip in net for net in self.networks)


def _field(match: Callable[[Any], bool], get: Callable[[InboundContext], Any], negate: bool) -> Predicate:
    if negate:
        return lambda ctx: not match(get(ctx))
    return lambda ctx: match(get(ctx))


def _peer_principal(ctx: InboundContext) -> str | None:
    return ctx.peer.principal


def _request_principal(ctx: InboundContext) -> str | None:
    return None if ctx.jwt is None else ctx.jwt.principal


def _namespace(ctx: InboundContext) -> str | None:
    return spiffe_namespace(ctx.peer.principal)


def _source_ip(ctx: InboundContext) -> str | None:
    return ctx.peer.address


def _compile_source(source: SourceConfig) -> list[Predicate]:
    checks: list[Predicate] = []
    for values, negate in ((source.principals, False), (source.not_principals, True)):
        if values:
            checks.append(_field(StringMatch(values, _principal), _peer_principal, negate))
    for values, negate in ((source.request_principals, False), (source.not_request_principals, True)):
        if values:
            checks.append(_field(StringMatch(values), _request_principal, negate))
    for values, negate in ((source.namespaces, False), (source.not_namespaces, True)):
        if values:
            checks.append(_field(StringMatch(values), _namespace, negate))
    for blocks, negate in ((source.ip_blocks, False), (source.not_ip_blocks, True)):
        if blocks:
            checks.append(_field(IpMatch(blocks), _source_ip, negate))
    return checks


def _host_matches(match: StringMatch) -> Predicate:
    def check(ctx: InboundContext) -> bool:
        # ctx.host is lower-case without a trailing dot (RFC 4343, CVE-2021-39155: a deny on "httpbin.foo"
        # must catch "Httpbin.Foo"). A pattern without a port matches any port ("reviews" matches
        # "reviews:80", as Istio's generated host:* twins do); one with a port needs that port.
        host = ctx.host
        if host is None:
            return False
        name = _PORT.sub("", host)
        return match(name) or (name != host and match(host))

    return check


# A port after the host (not inside an IPv6 literal's brackets).
_PORT: Final = re.compile(r"(?<=[^:\]]|\])(?::\d*)$")


def normal_host(host: str) -> str:
    """Lower case, no trailing dot on the name, port kept: ``Reviews.:80`` → ``reviews:80`` (RFC 4343)."""
    host = host.lower()
    name = _PORT.sub("", host)
    return name.rstrip(".") + host[len(name) :] if name.endswith(".") else host


def _method(ctx: InboundContext) -> str:
    return ctx.request.method


def _path(ctx: InboundContext) -> str:
    return ctx.path


def _negated(check: Predicate) -> Predicate:
    return lambda ctx: not check(ctx)


def _compile_operation(op: OperationConfig) -> list[Predicate]:
    checks: list[Predicate] = []
    for values, negate in ((op.hosts, False), (op.not_hosts, True)):
        if values:
            host_check = _host_matches(StringMatch(values, _lower_host, _lower_host))
            checks.append(_negated(host_check) if negate else host_check)
    for ports, negate in ((op.ports, False), (op.not_ports, True)):
        if ports:
            wanted = frozenset(ports)
            checks.append(_field(wanted.__contains__, lambda ctx: ctx.request.port, negate))
    for values, negate in ((op.methods, False), (op.not_methods, True)):
        if values:
            checks.append(_field(StringMatch(values), _method, negate))
    for values, negate in ((op.paths, False), (op.not_paths, True)):
        if values:
            checks.append(_field(StringMatch(values), _path, negate))
    return checks


_CLAIM_PATH: Final = re.compile(r"\[([^\]\[]+)\]")


def _claim_values(value: Any) -> list[str]:
    # Istio matches string claims and lists of strings; other scalars compare in their JSON spelling.
    if isinstance(value, str):
        return [value]
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, int | float):
        return [str(value)]
    if isinstance(value, list):
        return [v for item in value for v in _claim_values(item) if not isinstance(item, list | dict)]
    return []


def _condition_getter(key: str) -> Callable[[InboundContext], list[str]]:
    if key.startswith("request.headers["):
        name = key[len("request.headers[") : -1].lower()  # header names are case-insensitive (Istio normalises)
        return lambda ctx: [v] if (v := ctx.request.headers.get(name)) is not None else []
    if key.startswith("request.auth.claims["):
        path = _CLAIM_PATH.findall(key[len("request.auth.claims") :])

        def claims(ctx: InboundContext) -> list[str]:
            value: Any = None if ctx.jwt is None else ctx.jwt.claims
            for part in path:
                if not isinstance(value, Mapping):
                    return []
                value = value.get(part)
            return _claim_values(value)

        return claims
    simple: dict[str, Callable[[InboundContext], str | int | None]] = {
        "request.auth.principal": _request_principal,
        "source.principal": _peer_principal,
        "source.namespace": _namespace,
        "source.ip": _source_ip,
        "request.auth.presenter": lambda ctx: None if ctx.jwt is None else ctx.jwt.presenter,
        "destination.port": lambda ctx: ctx.request.port,
        "connection.sni": lambda ctx: ctx.peer.sni,
    }
    if key == "request.auth.audiences":
        return lambda ctx: [] if ctx.jwt is None else list(ctx.jwt.audiences)
    getter = simple[key]
    return lambda ctx: [] if (v := getter(ctx)) is None else [str(v)]


def _compile_condition(condition: ConditionConfig) -> Predicate:
    get = _condition_getter(condition.key)
    if condition.key == "source.ip":
        ips = IpMatch(condition.values) if condition.values else None
        not_ips = IpMatch(condition.not_values) if condition.not_values else None

        def ip_check(ctx: InboundContext) -> bool:
            values = get(ctx)
            if ips is not None and not any(ips(v) for v in values):
                return False
            return not (not_ips is not None and any(not_ips(v) for v in values))

        return ip_check
    match = StringMatch(condition.values) if condition.values else None
    not_match = StringMatch(condition.not_values) if condition.not_values else None

    def check(ctx: InboundContext) -> bool:
        values = get(ctx)
        if match is not None and not match.any(values):
            return False
        return not (not_match is not None and not_match.any(values))

    return check


def _all(checks: Sequence[Predicate]) -> Predicate:
    if not checks:
        return lambda ctx: True
    if len(checks) == 1:
        return checks[0]
    items = tuple(checks)

    def every(ctx: InboundContext) -> bool:
        for check in items:  # noqa: SIM110 - a plain loop: all(genexpr) costs a generator per request
            if not check(ctx):
                return False
        return True

    return every


def _any(options: Sequence[Predicate]) -> Predicate:
    if not options:
        return lambda ctx: True  # a part left out matches everything
    if len(options) == 1:
        return options[0]
    items = tuple(options)

    def some(ctx: InboundContext) -> bool:
        for option in items:  # noqa: SIM110
            if option(ctx):
                return True
        return False

    return some


def _compile_rule(rule: RuleConfig) -> Predicate:
    parts: list[Predicate] = []
    if rule.from_:
        parts.append(_any([_all(_compile_source(s)) for s in rule.from_]))
    if rule.to:
        parts.append(_any([_all(_compile_operation(o)) for o in rule.to]))
    parts.extend(_compile_condition(c) for c in rule.when)
    return _all(parts)


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """One authorization policy: its name (or ``authorization[i]``), action, and rule predicates."""

    name: str
    action: str
    rules: tuple[Predicate, ...]

    def matches(self, ctx: InboundContext) -> bool:
        for rule in self.rules:  # noqa: SIM110
            if rule(ctx):
                return True
        return False


def compile_policies(configs: Sequence[AuthorizationPolicyConfig]) -> list[CompiledPolicy]:
    return [
        CompiledPolicy(c.name or f"authorization[{i}]", c.action, tuple(_compile_rule(r) for r in c.rules))
        for i, c in enumerate(configs)
    ]


class AuthzFilter:
    """Deny policies, then allow policies: 403 ``RBAC: access denied`` (Envoy's message) when refused."""

    name: ClassVar[str] = "authz"

    def __init__(self, policies: Sequence[CompiledPolicy]) -> None:
        self.deny = tuple(p for p in policies if p.action == "deny")
        self.allow = tuple(p for p in policies if p.action == "allow")
        self._allow_names = ", ".join(p.name for p in self.allow)

    def apply(self, ctx: InboundContext) -> Denial | None:
        for policy in self.deny:
            if policy.matches(ctx):
                return Denial(403, FORBIDDEN, f"RBAC: access denied (deny policy {policy.name})", policy=policy.name)
        if not self.allow:
            return None
        for policy in self.allow:
            if policy.matches(ctx):
                return None
        return Denial(403, FORBIDDEN, "RBAC: access denied (no allow policy matched)", policy=self._allow_names)
