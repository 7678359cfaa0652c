"""Write docs/reference/config.md, the configuration reference, from the config's pydantic models.

    python docs/gen_config_reference.py           # rewrite docs/reference/config.md
    python docs/gen_config_reference.py --check   # exit 1, with a diff, when the file is not what the models give

The models are the contract, so the reference is walked from them: ``meshlib.MeshConfig`` and every model
it holds, each in a section of its own at the first config path it is found under (``clusters.NAME.retry``),
in the order a reader meets them, with every key's type, default and checks (from the model's JSON Schema)
and its description. A model added anywhere under ``MeshConfig`` shows up by itself.

Where a description comes from, first found wins:

1. the field's own ``Field(description=...)`` (the way to document a new field);
2. :data:`DESCRIPTIONS` below, keyed ``Model.field`` (a base class's entry serves its subclasses);
3. for a field that holds one model, the first paragraph of that model's docstring.

:data:`DESCRIPTIONS`, :data:`INTROS` and :data:`SEE_ALSO` may only name models and fields that exist: a
renamed or removed one stops the generator, so nothing here outlives the models. ``tests/test_docs_site.py``
fails while the committed file differs from what this script writes.
"""

from __future__ import annotations

import argparse
import difflib
import html
import inspect
import re
import sys
import types
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from meshlib import MeshConfig
from meshlib._config.durations import Duration

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "docs" / "reference" / "config.md"
COMMAND = "python docs/gen_config_reference.py"

# What each section's link to the narrative pages says (paths relative to docs/reference/).
SEE_ALSO: dict[str, list[tuple[str, str]]] = {
    "MeshConfig": [("Configuration", "../configuration.md#top-level")],
    "ClusterConfig": [
        ("Configuration", "../configuration.md#clustersname"),
        ("Load balancers", "../routing.md#4-choosing-an-endpoint-load-balancers"),
    ],
    "RetryConfig": [("Retries", "../resilience.md#retries"), ("Recipe", "../cookbook/retries.md")],
    "RetryBudgetConfig": [("Retry budgets", "../resilience.md#retry-budgets")],
    "CircuitBreakerConfig": [
        ("Circuit breaker", "../resilience.md#circuit-breaker"),
        ("Recipe", "../cookbook/circuit-breaker.md"),
    ],
    "OutlierDetectionConfig": [
        ("Outlier detection", "../resilience.md#outlier-detection"),
        ("Recipe", "../cookbook/outlier-ejection.md"),
    ],
    "HealthCheckConfig": [("Active health checks", "../resilience.md#active-health-checks")],
    "RateLimitConfig": [
        ("Rate limits", "../resilience.md#rate-limits"),
        ("Storage URLs", "../configuration.md#storage-urls"),
        ("Recipe", "../cookbook/rate-limits.md"),
    ],
    "HedgeConfig": [("Hedging", "../resilience.md#hedging")],
    "ClusterTlsConfig": [
        ("Outbound TLS and mTLS", "../security.md#outbound-tls-and-mtls"),
        ("Recipe", "../cookbook/mtls.md"),
    ],
    "RouteConfig": [("Configuration", "../configuration.md#routes"), ("Routing", "../routing.md")],
    "RouteMatchConfig": [
        ("Matching a route", "../routing.md#1-matching-a-route"),
        ("Recipe", "../cookbook/header-routing.md"),
    ],
    "SplitConfig": [
        ("Weighted splits", "../routing.md#3-choosing-a-cluster-weighted-splits"),
        ("Recipe", "../cookbook/canary.md"),
    ],
    "FaultConfig": [
        ("Fault injection", "../resilience.md#fault-injection-routes"),
        ("Recipe", "../cookbook/fault-injection.md"),
    ],
    "MirrorConfig": [("Mirroring", "../resilience.md#mirroring-routes")],
    "SidecarConfig": [("The sidecar", "../sidecar.md"), ("Sidecar operations", "../sidecar-operations.md")],
    "DiscoveryConfig": [("Discovery", "../discovery.md")],
    "XdsConfig": [("xDS", "../xds.md")],
    "XdsDiscoveryConfig": [("xDS", "../xds.md#how-it-works")],
    "DnsDiscoveryConfig": [("DNS", "../discovery.md#dns")],
    "EtcdDiscoveryConfig": [("Subsets", "../discovery.md#clusters-from-the-registry-and-subsets")],
    "RegistryConfig": [("The etcd registry", "../discovery.md#the-etcd-registry")],
    "EtcdConfig": [
        ("When etcd fails", "../discovery.md#when-etcd-fails"),
        ("Running etcd", "../discovery.md#running-etcd"),
    ],
    "RegisterConfig": [("Registering a workload", "../discovery.md#registering-a-workload")],
    "ConfigSourceConfig": [("The mesh config from etcd", "../discovery.md#the-mesh-config-from-etcd")],
    "InboundConfig": [("Security", "../security.md")],
    "InboundMtlsConfig": [("Inbound mTLS", "../security.md#inbound-mtls"), ("Recipe", "../cookbook/mtls.md")],
    "JwtProviderConfig": [("JWT", "../security.md#jwt"), ("Recipe", "../cookbook/jwt.md")],
    "AuthorizationPolicyConfig": [
        ("Authorization", "../security.md#authorization"),
        ("Recipe", "../cookbook/authorization.md"),
    ],
}

# A section's opening, where the model's docstring speaks to Python callers rather than to config writers.
INTROS: dict[str, str] = {
    "MeshConfig": (
        "The keys at the top of a mesh config. Only what a config sets differs from the defaults; a config"
        " with no clusters, no routes and no `inbound` is refused unless it sets `allow_empty: true`."
    ),
}

DESCRIPTIONS: dict[str, str] = {
    # top level
    "MeshConfig.service": "This workload's name.",
    "MeshConfig.outbound_policy": (
        "A request to a host that no route or cluster claims: `allow_any` sends it to that host untouched,"
        " `registry_only` fails it with `RouteNotFoundError` before any I/O."
    ),
    "MeshConfig.clusters": "Name → cluster. The name is also a host clients call: `http://ratings/`.",
    "MeshConfig.routes": (
        "Routes, tried in order: the first whose `match` holds wins. Every cluster is also reachable by its"
        " name, through an implicit route after these."
    ),
    "MeshConfig.allow_empty": (
        "Accept a config with no clusters, no routes and no `inbound`, which is otherwise refused as a likely"
        " mistake (a truncated file, a template that rendered empty)."
    ),
    # clusters
    "ClusterConfig.endpoints": (
        "The upstream addresses: `scheme://host[:port]` strings (weight 1) or `{url, weight}` mappings;"
        " `http` or `https`, no path, query or user, no duplicates. Required unless `discovery` is set"
        " (then refused)."
    ),
    "ClusterConfig.discovery": (
        "Take the endpoints from DNS or the etcd registry instead of `endpoints`: exactly one of `dns`, `etcd`."
    ),
    # discovery
    "EtcdDiscoveryConfig.service": "The registered service whose instances are this cluster's endpoints.",
    "EtcdDiscoveryConfig.labels": (
        "Only instances with all of these labels (a subset, as Istio's DestinationRule subsets); none: every instance."
    ),
    "XdsDiscoveryConfig.cluster": "The xDS Cluster resource's name, as the control plane spells it.",
    "DnsDiscoveryConfig.name": "The DNS name; every A and AAAA record of it is an endpoint.",
    "DnsDiscoveryConfig.port": "The port of every endpoint (DNS A/AAAA records carry none).",
    "DnsDiscoveryConfig.scheme": "`http`, or `https` with the cluster's `tls`.",
    "DnsDiscoveryConfig.refresh": (
        "The longest a set is kept without asking again; the records' TTL asks sooner, never sooner than"
        " `min(5s, refresh)`."
    ),
    "DnsDiscoveryConfig.resolvers": (
        "`IP:PORT` of the name servers to ask (`[::1]:53` for IPv6), instead of the system's /etc/resolv.conf."
    ),
    "EtcdConfig.endpoints": "The etcd members' client URLs, `http://` or `https://` (all the same scheme).",
    "EtcdConfig.prefix": (
        "Every key meshlib reads or writes lives under it: `services/` (registrations), `config-status/`;"
        " starts and ends with `/`."
    ),
    "EtcdConfig.snapshot": (
        "A file for the last good registrations and config document, written as they change: the mesh starts"
        " from it when etcd is unreachable at start."
    ),
    "EtcdConfig.username": "etcd user, with `password`, when etcd's auth is on.",
    "EtcdConfig.password": "The user's password (redacted in `/config_dump`).",
    "EtcdConfig.timeout": "How long one call to a member may take before the next member is tried.",
    "EtcdConfig.start_timeout": (
        "With etcd unreachable at start and no snapshot, how long to keep trying before the mesh fails"
        " (`DiscoveryError`; the sidecar exits 4)."
    ),
    "EtcdTlsConfig.ca_file": "The CA of etcd's serving certificate (PEM); the system's CAs when absent.",
    "EtcdTlsConfig.cert_file": "A client certificate (PEM), when etcd asks for one; with `key_file`.",
    "EtcdTlsConfig.key_file": "The client certificate's private key (PEM).",
    "RegisterConfig.service": "The service this workload is an instance of.",
    "RegisterConfig.address": (
        "Where callers reach it, `http://host:port`. Required in process; the sidecar defaults to its inbound listener."
    ),
    "RegisterConfig.labels": "Labels clusters select subsets by, e.g. `{version: v2}`.",
    "RegisterConfig.ttl": (
        "The lease: the key goes this long after a crash. Whole seconds, at least 2s; renewed three times per TTL."
    ),
    "EtcdConfigSourceConfig.key": (
        "The key whose value is this workload's config document (YAML or JSON); under `registry.etcd.prefix`."
    ),
    "ClusterConfig.lb": (
        "How an endpoint is picked: `round_robin` (smooth, weighted), `random` (weighted), `least_request`"
        " (power of two choices by requests in flight), `ring_hash` (consistent hashing on `hash_on`)."
    ),
    "ClusterConfig.hash_on": "Required with `lb: ring_hash`, refused otherwise: `{header: NAME}` or `{cookie: NAME}`.",
    "ClusterConfig.connect_timeout": (
        "Bounds making a connection; running out is a connect failure (`UpstreamConnectError`), retried under"
        " `connect-failure`."
    ),
    "ClusterConfig.timeout": (
        "The whole request's deadline: every try, every backoff and the response body (`RequestTimeoutError`"
        " with `kind` `request`). A route's `timeout` replaces it."
    ),
    "ClusterConfig.retry": "When and how often a request is tried again; a route's own `retry` replaces it.",
    "ClusterConfig.rate_limit": (
        "A request rate shared by every route into the cluster (a route's own `rate_limit` replaces it);"
        " over it: `RateLimitedError`, nothing sent."
    ),
    "ClusterConfig.hedge": "Tail-latency hedging for idempotent requests; a route's own `hedge` replaces it.",
    "ClusterConfig.tls": (
        "How connections to the endpoints are secured (DestinationRule `trafficPolicy.tls`); without it an"
        " `https://` endpoint uses the client's own TLS settings."
    ),
    "EndpointConfig.url": "`http://host[:port]` or `https://host[:port]`: scheme, host and port only.",
    "EndpointConfig.weight": "The endpoint's relative share of the cluster's traffic.",
    "HashOnConfig.header": "Hash this request header's value.",
    "HashOnConfig.cookie": "Hash this cookie's value.",
    # retries
    "RetryConfig.attempts": "Tries in all, the first included: `1` never retries (Envoy and Istio count retries only).",
    "RetryConfig.per_try_timeout": (
        "Bounds each try, its response body included (`RequestTimeoutError` with `per_try` true); such a try"
        " is retried only under `per-try-timeout`."
    ),
    "RetryConfig.retry_on": (
        "What retries a try: `connect-failure`, `reset`, `5xx`, `gateway-error` (502, 503, 504),"
        " `retriable-status-codes`, `per-try-timeout`. Methods that are not idempotent are retried on"
        " `connect-failure` only, unless `methods` lists them."
    ),
    "RetryConfig.retriable_status_codes": (
        "Status codes retried (listing them is enough). A route's retry that names none takes those of its"
        " cluster's retry."
    ),
    "RetryConfig.budget": "Caps retries, and hedges, at a share of recent requests; `null` turns it off.",
    "RetryConfig.methods": (
        "Methods retried on any `retry_on` condition besides the idempotent ones (GET, HEAD, OPTIONS, TRACE,"
        " PUT, DELETE), e.g. `[POST]`."
    ),
    "RetryConfig.buffer_limit_bytes": (
        "Request bodies up to this size are kept to replay on a retry, a hedge or a mirror; a larger or"
        " streamed body is sent once and never retried."
    ),
    "BackoffConfig.base": "The first retry's wait is drawn from [0, `base`]; the bound doubles with each retry.",
    "BackoffConfig.max": (
        "The bound stops growing here; also the longest `Retry-After` (on a 429 or 503) that is honoured."
        " At least `base`."
    ),
    "RetryBudgetConfig.ratio": "Retries may add at most this share of the requests of the last `window`.",
    "RetryBudgetConfig.min_retries_per_second": "A reserve on top of `ratio`, so that a quiet service can still retry.",
    "RetryBudgetConfig.window": "How far back requests are counted.",
    # breaker, ejection, health
    "CircuitBreakerConfig.failure_threshold": (
        "Failed tries in a row (an error or a 5xx) that open the breaker; while open, tries fail at once with"
        " `CircuitOpenError`. `null`: never opens (only `max_concurrent_requests` applies)."
    ),
    "CircuitBreakerConfig.recovery_timeout": "How long the breaker stays open before one trial request goes through.",
    "CircuitBreakerConfig.max_concurrent_requests": (
        "Requests in flight to the cluster at most (each until its response body is closed); beyond it:"
        " `OverloadedError`. `null`: no cap."
    ),
    "CircuitBreakerConfig.storage": (
        "Where the breaker's state lives: `memory://` (this process) or `redis://...`, one breaker shared by"
        " every process (fails open when Redis is down)."
    ),
    "OutlierDetectionConfig.consecutive_5xx": (
        "Failed tries in a row on one endpoint (a 5xx, a connect failure, a reset or a timeout) that eject it."
    ),
    "OutlierDetectionConfig.interval": (
        "Each `interval` an endpoint spends back in service takes one off its count of ejections."
    ),
    "OutlierDetectionConfig.base_ejection_time": (
        "An ejection lasts this × the number of times the endpoint was ejected."
    ),
    "OutlierDetectionConfig.max_ejection_time": "The longest an ejection lasts.",
    "OutlierDetectionConfig.max_ejection_percent": (
        "At most this share of the cluster is ejected at once; one endpoint always may be, unless it is 0."
    ),
    "HealthCheckConfig.path": "Probed with `GET <endpoint><path>`.",
    "HealthCheckConfig.interval": (
        "Time between two probes of an endpoint; the first round runs one interval after start."
    ),
    "HealthCheckConfig.timeout": "A probe that takes longer fails.",
    "HealthCheckConfig.unhealthy_threshold": "Failed probes in a row that take an endpoint out of load balancing.",
    "HealthCheckConfig.healthy_threshold": "Passed probes in a row that bring it back.",
    "HealthCheckConfig.expected_statuses": "Statuses that pass; redirects are not followed.",
    # limits, hedges
    "RateLimitConfig.rate": (
        "In the `limits` notation: `100/second`, `10 per minute`; several joined with `;`"
        " (`10/second;500/minute`) must all admit a request."
    ),
    "RateLimitConfig.storage": (
        "Where the count lives: `memory://` (in the mesh) or `redis://HOST:PORT[/DB]`, one count shared by"
        " processes (fails open when Redis is down)."
    ),
    "RateLimitConfig.strategy": "The `limits` library's windowing strategy.",
    "HedgeConfig.after": (
        "Another try goes out when the request has not answered after this; set it near the p95 latency."
    ),
    "HedgeConfig.max_extra": "Extra tries at most, `after` apart.",
    # cluster TLS
    "ClusterTlsConfig.mode": (
        "`disable`: plaintext (`http://` endpoints only); `simple`: TLS; `mutual`: TLS with this workload's"
        " certificate."
    ),
    "ClusterTlsConfig.ca_file": (
        "PEM CA certificates the upstream's certificate must chain to (the system's trust store when unset);"
        " required with `mutual`."
    ),
    "ClusterTlsConfig.cert_file": (
        "This workload's PEM certificate (and intermediates), presented to the upstream; required with `mutual`."
    ),
    "ClusterTlsConfig.key_file": (
        "Its unencrypted PEM key; required with `mutual`, and with `cert_file` under `simple`."
    ),
    "ClusterTlsConfig.server_name": (
        "The SNI sent, and the name the certificate must be valid for when `expected_identities` is empty;"
        " the endpoint's host when unset."
    ),
    "ClusterTlsConfig.expected_identities": (
        "SPIFFE IDs the upstream may present; when set, the host name is not checked and any other ID raises"
        " `PeerIdentityError` before the request is sent."
    ),
    # routes
    "RouteConfig.name": "Unique; named in errors, logs and stats. Without one: `route-N`, N its index.",
    "RouteConfig.match": "Conditions a request must meet, all of them; left out, the route matches every request.",
    "RouteConfig.cluster": "Send to this cluster. Exactly one of `cluster`, `split` and `direct_response`.",
    "RouteConfig.split": (
        "Send to a cluster drawn by weight for each request (a canary); retries stay in the drawn cluster."
    ),
    "RouteConfig.direct_response": "Answer from the mesh, with no upstream: maintenance pages, stubs.",
    "RouteConfig.timeout": "Replaces the cluster's `timeout` for this route's requests.",
    "RouteConfig.retry": (
        "Replaces the cluster's `retry` for this route's requests, except that it may take the cluster's"
        " `retriable_status_codes`."
    ),
    "RouteConfig.rate_limit": "Replaces the cluster's `rate_limit` for this route: one count for its requests.",
    "RouteConfig.hedge": "Replaces the cluster's `hedge` for this route's requests.",
    "RouteMatchConfig.host": (
        "The request's host, case-insensitive, port ignored: a name, `*.example.com` (any subdomain) or `*`."
    ),
    "RouteMatchConfig.authority": (
        "The request's exact authority, `host[:port]` as the URL has it (lowercase, no default port): what xDS"
        " listeners are named by. With `host`, that must be its host."
    ),
    "RouteMatchConfig.percent": (
        "The share of requests (0 to 100) the route applies to, drawn per request after its other conditions"
        " hold, as Envoy's `runtime_fraction`; the rest go on to the next route."
    ),
    "RouteMatchConfig.path": "The exact path, percent-encoded as sent, without the query.",
    "RouteMatchConfig.path_prefix": "A prefix of the path. At most one of `path`, `path_prefix` and `path_regex`.",
    "RouteMatchConfig.path_regex": "A regex the whole path must match.",
    "RouteMatchConfig.method": "A method, or a list of methods.",
    "RouteMatchConfig.headers": (
        "Header name → how its value must match (repeated headers are joined with `, `); a string means `exact`."
    ),
    "RouteMatchConfig.query": "Query parameter → how its first value must match; a string means `exact`.",
    "StringMatchConfig.exact": "The whole value is this.",
    "StringMatchConfig.prefix": "The value starts with this.",
    "StringMatchConfig.regex": "A regex the whole value must match.",
    "StringMatchConfig.present": "`true`: the header or parameter is there, whatever its value.",
    "StringMatchConfig.absent": "`true`: the header or parameter is not there.",
    "SplitConfig.cluster": "A defined cluster, at most once per split.",
    "SplitConfig.weight": "Relative: weights 95 and 5 send 95% and 5%.",
    "DirectResponseConfig.status": "The answer's status.",
    "DirectResponseConfig.body": (
        "The answer's body; `content-type: text/plain` when there is one and `headers` sets none."
    ),
    "DirectResponseConfig.headers": "The answer's headers.",
    "RewriteConfig.path_prefix": (
        "Replaces the matched prefix: the route's `path_prefix`, its `path`, or `/` when it matches no path"
        " (not with `path_regex`)."
    ),
    "RewriteConfig.host": "The Host header the upstream sees.",
    "RouteHeadersConfig.request": "Edits of the request, before it goes upstream.",
    "RouteHeadersConfig.response": "Edits of the response on its way back, direct responses included.",
    "HeaderOpsConfig.set": "Headers set, replacing any of the same name.",
    "HeaderOpsConfig.add": "Headers appended, keeping those already there.",
    "HeaderOpsConfig.remove": "Headers removed.",
    "FaultConfig.delay": "Hold some requests before they go on.",
    "FaultConfig.abort": "Answer some requests from the mesh, with an error status.",
    "FaultDelayConfig.duration": "How long a request is held (on the mesh's clock; not counted against `timeout`).",
    "FaultDelayConfig.percent": "The share of the route's requests delayed.",
    "FaultAbortConfig.status": (
        "The status answered, with the body `fault filter abort` and `x-meshlib-fault: abort`; no upstream is called."
    ),
    "FaultAbortConfig.percent": "The share of the route's requests aborted.",
    "MirrorConfig.cluster": (
        "The shadow cluster; its copies' Host header gets `-shadow` appended. An undefined one mirrors"
        " nothing (a warning)."
    ),
    "MirrorConfig.percent": "The share of the route's requests copied.",
    # sidecar
    "SidecarConfig.outbound": "The outbound listener: an HTTP/1.1 forward proxy for the app's outgoing requests.",
    "SidecarConfig.inbound": "The inbound listener, in front of the local app; none when absent.",
    "SidecarConfig.admin": "The admin listener, loopback only: readiness, config, clusters, stats, reload and drain.",
    "ListenerConfig.listen": (
        "`HOST:PORT`, `[IPv6]:PORT` or `:PORT` (loopback); port 0 picks a free one. A `meshlib proxy` flag"
        " or a `MESHLIB_SIDECAR_*_LISTEN` variable overrides it."
    ),
    "InboundListenerConfig.app": "Where the app listens: `http://HOST:PORT`.",
    "AdminListenerConfig.listen": (
        "`HOST:PORT` on loopback (127.0.0.0/8, `::1` or `localhost`), whichever way it is given: file,"
        " `--admin` or `MESHLIB_SIDECAR_ADMIN_LISTEN`."
    ),
    "SidecarLimitsConfig.max_connections": "Client connections open at once on a listener; one more is closed at once.",
    "SidecarLimitsConfig.max_request_headers_kb": "The largest request head in KiB; a larger one gets 431.",
    "SidecarLimitsConfig.header_timeout": "Time a client has to send a request's head (else 408), and a TLS handshake.",
    "SidecarLimitsConfig.idle_timeout": (
        "A keep-alive connection idle this long is closed, as is a request body that stalls."
    ),
    "SidecarLimitsConfig.drain_timeout": (
        "On `SIGTERM` or `POST /drain`, how long requests in flight may take to finish."
    ),
    # inbound policy
    "InboundConfig.mtls": "PeerAuthentication: whether callers must present a client certificate. Absent: permissive.",
    "InboundConfig.jwt": (
        "RequestAuthentication: the JWT issuers accepted. A request without a token passes, unauthenticated;"
        " one with an invalid token gets 401."
    ),
    "InboundConfig.authorization": (
        "AuthorizationPolicy: deny policies first, then, when there is any allow policy, a request must match one."
    ),
    "InboundConfig.trusted_proxies": (
        "Addresses whose `x-forwarded-client-cert` the in-process middleware believes (a sidecar in front);"
        " from any other address the header is removed."
    ),
    "InboundMtlsConfig.mode": (
        "`strict`: mTLS only; `permissive`: mTLS or plaintext on one port; `disable`: plaintext only."
    ),
    "InboundMtlsConfig.ca_file": "PEM CA certificates a client certificate must chain to; required unless `disable`.",
    "InboundMtlsConfig.cert_file": (
        "The certificate the sidecar's inbound listener presents; required unless `disable`."
    ),
    "InboundMtlsConfig.key_file": "Its PEM key; required unless `disable`.",
    "JwtProviderConfig.issuer": "The tokens' `iss`, which picks the provider; unique.",
    "JwtProviderConfig.audiences": "`aud` values accepted; empty: any.",
    "JwtProviderConfig.jwks_file": "A JWKS file, read again within a second of a change.",
    "JwtProviderConfig.jwks_uri": (
        "A JWKS URL, fetched in the background every `jwks_cache_duration` (sooner after a failure; the last"
        " good keys stay)."
    ),
    "JwtProviderConfig.jwks": "The JWKS, inline, as JSON text.",
    "JwtProviderConfig.jwks_cache_duration": "How often `jwks_uri` is fetched again.",
    "JwtProviderConfig.from_headers": "Headers a token is read from, each with the prefix before it.",
    "JwtProviderConfig.from_params": "Query parameters a token is read from.",
    "JwtProviderConfig.forward_original_token": "Keep the token's header for the app; it is removed by default.",
    "JwtProviderConfig.output_payload_to_header": (
        "A header that passes the verified claims to the app (base64url JSON); a caller's own is removed."
    ),
    "JwtProviderConfig.leeway": "Seconds of clock skew allowed for `exp`, `nbf` and `iat`.",
    "JwtHeaderConfig.name": "The header.",
    "JwtHeaderConfig.prefix": "What comes before the token, e.g. `Bearer ` (with its space).",
    "AuthorizationPolicyConfig.name": "Named in the 403 answer; unique. Without one: `authorization[i]`.",
    "AuthorizationPolicyConfig.action": (
        "`deny`: refuse what a rule matches; `allow`: when any allow policy exists, only what one of their"
        " rules matches passes."
    ),
    "AuthorizationPolicyConfig.rules": "The policy applies when one of them matches; with none, it matches nothing.",
    "RuleConfig.from": "Sources, one of which must match; a mapping is a list of one. Left out: any source.",
    "RuleConfig.to": "Operations, one of which must match; a mapping is a list of one. Left out: any operation.",
    "RuleConfig.when": "Conditions, all of which must hold.",
    "SourceConfig.principals": (
        "The peer's SPIFFE ID (mTLS), written `spiffe://TD/ns/NS/sa/SA` or, as Istio does, `TD/ns/NS/sa/SA`."
        " Each item here and below is a pattern: exact, `prefix*`, `*suffix`, or `*` (present)."
    ),
    "SourceConfig.request_principals": "`iss/sub` of the verified JWT.",
    "SourceConfig.namespaces": "The namespace in the peer's SPIFFE ID.",
    "SourceConfig.ip_blocks": "The connection's source address: addresses or CIDRs.",
    "OperationConfig.hosts": (
        "The Host header, case-insensitive, without a trailing dot: `reviews` matches any port, `reviews:8080`"
        " that one."
    ),
    "OperationConfig.ports": "The port the request arrived on.",
    "OperationConfig.methods": "The request's method.",
    "OperationConfig.paths": "The normalised path, without the query: `/exact`, `/prefix*`, `*suffix` or `*`.",
    "ConditionConfig.key": (
        "`request.headers[NAME]`, `request.auth.claims[NAME]` (nested: `claims[a][b]`), `request.auth.principal`,"
        " `request.auth.audiences`, `request.auth.presenter`, `source.ip`, `source.principal`,"
        " `source.namespace`, `destination.port` or `connection.sni`."
    ),
    "ConditionConfig.values": "The attribute must match one of these.",
    "ConditionConfig.not_values": "The attribute must match none of these.",
}

_ROOT_PATH = ""


@dataclass
class Section:
    """One model's part of the reference: where it is first found, and where else."""

    model: type[BaseModel]
    path: str
    also: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return "Top level" if self.path == _ROOT_PATH else self.path

    @property
    def anchor(self) -> str:
        return slugify(self.title)


def slugify(text: str) -> str:
    """The id Python-Markdown's toc extension (MkDocs) gives a heading; GitHub's is the same for these titles."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


# --- walking the models ----------------------------------------------------------------------------------------------


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _placements(tp: Any, path: str) -> Iterator[tuple[type[BaseModel], str]]:
    """Each model inside the type ``tp`` found at ``path``, with its path (``[]``: a list item, ``.NAME``: a key)."""
    origin = get_origin(tp)
    if origin is Annotated:
        yield from _placements(get_args(tp)[0], path)
    elif origin is Union or origin is types.UnionType:
        for member in get_args(tp):
            yield from _placements(member, path)
    elif origin is list:
        yield from _placements(get_args(tp)[0], path + "[]")
    elif origin is dict:
        yield from _placements(get_args(tp)[1], path + ".NAME")
    elif _is_model(tp):
        yield tp, path


def _key(name: str, info: FieldInfo) -> str:
    return info.alias or name


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def sections(root: type[BaseModel] = MeshConfig) -> list[Section]:
    """Every model under ``root``, depth first, each at the first path it is found under."""
    found: dict[type[BaseModel], Section] = {}
    order: list[Section] = []

    def visit(model: type[BaseModel], path: str) -> None:
        if model in found:
            found[model].also.append(path)
            return
        section = found[model] = Section(model, path)
        order.append(section)
        for name, info in model.model_fields.items():
            for inner, inner_path in _placements(info.annotation, _join(path, _key(name, info))):
                visit(inner, inner_path)

    visit(root, _ROOT_PATH)
    return order


# --- text ------------------------------------------------------------------------------------------------------------


def _markdown(docstring: str) -> str:
    """A docstring's reStructuredText as Markdown: ``code`` and roles as code spans, literal blocks left out."""
    lines: list[str] = []
    skipping = False
    for line in inspect.cleandoc(docstring).splitlines():
        if skipping:
            if not line.strip() or line.startswith((" ", "\t")):
                continue
            skipping = False
        if line.rstrip().endswith("::"):
            line = line.rstrip()[:-2].rstrip() + "."
            skipping = True
        lines.append(line)
    text = "\n".join(lines).strip()
    text = re.sub(r":meth:`([^`]+)`", r"`\1()`", text)
    text = re.sub(r":(?:class|func|data|attr):`([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _first_paragraph(docstring: str | None) -> str:
    return " ".join(_markdown(docstring).split("\n\n")[0].split()) if docstring else ""


def _own_doc(model: type[BaseModel]) -> str | None:
    doc = model.__dict__.get("__doc__")
    return doc if isinstance(doc, str) else None


def _code(text: str) -> str:
    """``text`` as inline code that survives a table cell in MkDocs and on GitHub (a ``|`` would split it)."""
    if "|" in text or "`" in text:
        return "<code>" + html.escape(text).replace("|", "&#124;") + "</code>"
    return f"`{text}`"


def _yaml(value: Any) -> str:
    """A default as YAML in flow style, as a config would write it."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1_000_000).strip()
    return text.removesuffix("...").strip()


# --- types and checks, from the JSON Schema --------------------------------------------------------------------------

_DURATION_PATTERN = TypeAdapter(Duration).json_schema()["pattern"]
_PLURALS = {"string": "strings", "integer": "integers", "number": "numbers", "boolean": "booleans"}


class _Schema:
    """One model's JSON Schema, read for a reference: each key's type in words, and its checks."""

    def __init__(self, model: type[BaseModel], anchors: Mapping[str, str]) -> None:
        schema = model.model_json_schema()
        self.defs: dict[str, Any] = schema.get("$defs", {})
        self.properties: dict[str, Any] = self._object(schema).get("properties", {})
        self.anchors = anchors  # model name → its section's anchor

    @staticmethod
    def _object(schema: dict[str, Any]) -> dict[str, Any]:
        if "properties" in schema:
            return schema
        return next((m for m in schema.get("anyOf", []) if "properties" in m), {})  # a model with a shorthand

    def _resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = self.defs[node["$ref"].rsplit("/", 1)[-1]]
        return node

    def _members(self, node: dict[str, Any]) -> list[dict[str, Any]]:
        node = self._resolve(node)
        if "anyOf" in node:
            return [m for member in node["anyOf"] for m in self._members(member)]
        return [] if node.get("type") == "null" else [node]

    def type_of(self, node: dict[str, Any], *, plural: bool = False) -> str:
        words: list[str] = []
        for member in self._members(node):
            word = self._type_word(member, plural=plural)
            if word not in words:
                words.append(word)
        return " or ".join(words) or "null"

    def _type_word(self, node: dict[str, Any], *, plural: bool) -> str:
        if "const" in node:
            return f"`{_yaml(node['const'])}`"
        if "enum" in node:
            choices = [_code(_yaml(v)) for v in node["enum"]]
            return ("any of " if plural else "one of ") + ", ".join(choices)
        kind = node.get("type")
        if "properties" in node and node.get("title") in self.anchors:
            return f"[{'mappings' if plural else 'mapping'}](#{self.anchors[node['title']]})"
        if kind == "array":
            return "list of " + self.type_of(node.get("items", {}), plural=True)
        if kind == "object":
            values = node.get("additionalProperties")
            if not isinstance(values, dict):
                values = next(iter(node.get("patternProperties", {}).values()), None)
            if isinstance(values, dict):
                return "mapping of NAME to " + self.type_of(values)
            return "mappings" if plural else "mapping"
        if kind == "string" and node.get("pattern") == _DURATION_PATTERN:
            return f"[{'durations' if plural else 'duration'}](#durations)"
        if isinstance(kind, str):
            return _PLURALS.get(kind, kind) if plural else kind
        return "any"

    def checks_of(self, node: dict[str, Any]) -> list[str]:
        checks: list[str] = []
        for member in self._members(node):
            for check in self._checks(member):
                if check not in checks:
                    checks.append(check)
        return checks

    def _checks(self, node: dict[str, Any]) -> list[str]:
        checks: list[str] = []
        low, high = node.get("minimum"), node.get("maximum")
        if low is not None and high is not None:
            checks.append(f"from {_number(low)} to {_number(high)}")
        elif low is not None:
            checks.append(f"at least {_number(low)}")
        elif high is not None:
            checks.append(f"at most {_number(high)}")
        if "exclusiveMinimum" in node:
            checks.append(f"above {_number(node['exclusiveMinimum'])}")
        if "exclusiveMaximum" in node:
            checks.append(f"below {_number(node['exclusiveMaximum'])}")
        if node.get("minLength") == 1:
            checks.append("not empty")
        elif "minLength" in node:
            checks.append(f"at least {node['minLength']} characters")
        if "maxLength" in node:
            checks.append(f"at most {node['maxLength']} characters")
        if node.get("minItems") == 1:
            checks.append("at least one item")
        elif "minItems" in node:
            checks.append(f"at least {node['minItems']} items")
        if "maxItems" in node:
            checks.append(f"at most {node['maxItems']} items")
        pattern = node.get("pattern")
        if pattern is not None and pattern != _DURATION_PATTERN:
            checks.append(f"matches {_code(pattern)}")
            checks += [f"e.g. {_code(str(example))}" for example in node.get("examples", [])[:1]]
        if node.get("type") == "array" and "items" in node:
            checks += [f"each {check}" for check in self.checks_of(node["items"])]
        if node.get("type") == "object":
            names = dict(node.get("propertyNames", {}))
            for pattern in node.get("patternProperties", {}):
                names["pattern"] = pattern
            checks += [f"NAME {check}" for check in self._checks(names)]
            values = node.get("additionalProperties")
            if isinstance(values, dict):
                checks += [f"each {check}" for check in self.checks_of(values)]
        return checks


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _annotated(info: FieldInfo) -> Any:
    """The field's type with its validators and serializers, as pydantic builds it."""
    return Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation


def _positive_duration(info: FieldInfo) -> bool:
    """Whether a duration field refuses ``0s`` (a PositiveDuration)."""
    try:
        TypeAdapter(_annotated(info)).validate_python("0s")
    except ValidationError:
        return True
    return False


# --- the page --------------------------------------------------------------------------------------------------------


def _description(model: type[BaseModel], name: str, info: FieldInfo) -> str:
    if info.description:
        return " ".join(info.description.split())
    key = _key(name, info)
    for klass in model.__mro__:
        text = DESCRIPTIONS.get(f"{klass.__name__}.{key}")
        if text is not None:
            return text
    if key.startswith("not_") and key[4:] in {_key(n, i) for n, i in model.model_fields.items()}:
        return f"The opposite of `{key[4:]}`: matches when none of these does."
    inner = {m for m, _ in _placements(info.annotation, "")}
    if len(inner) == 1:
        return _first_paragraph(_own_doc(inner.pop()))
    return ""


def _default(info: FieldInfo, anchors: Mapping[str, str]) -> str:
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "none"
    if isinstance(value, BaseModel):
        try:
            plain = type(value)()
        except ValidationError:
            plain = None
        if value == plain and type(value).__name__ in anchors:
            return f"[its defaults](#{anchors[type(value).__name__]})"
    dumped = TypeAdapter(_annotated(info)).dump_python(value, mode="json")
    return _code(_yaml(dumped))


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")  # code with a "|" is <code> with &#124; already


def _rows(section: Section, anchors: Mapping[str, str]) -> list[str]:
    schema = _Schema(section.model, anchors)
    rows = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for name, info in section.model.model_fields.items():
        key = _key(name, info)
        node = schema.properties.get(key, {})
        checks = schema.checks_of(node)
        if "(#durations)" in schema.type_of(node) and _positive_duration(info):
            checks.insert(0, "longer than 0s")
        text = _description(section.model, name, info)
        if checks:
            sentence = "; ".join(checks)
            text = f"{text} {sentence[0].upper()}{sentence[1:]}.".strip()
        cells = [f"`{key}`", schema.type_of(node), _default(info, anchors), text]
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return rows


def _check_tables(found: list[Section]) -> None:
    """Stop when a table names a model or field the models no longer have, so nothing here outlives them."""
    models = {s.model.__name__: s.model for s in found}
    stale = [f"SEE_ALSO[{name!r}]" for name in SEE_ALSO if name not in models]
    stale += [f"INTROS[{name!r}]" for name in INTROS if name not in models]
    for entry in DESCRIPTIONS:
        model_name, _, key = entry.partition(".")
        model = models.get(model_name)
        keys = {_key(n, i) for n, i in model.model_fields.items()} if model else set()
        if key not in keys:
            stale.append(f"DESCRIPTIONS[{entry!r}]")
    if stale:
        raise SystemExit(
            f"{Path(__file__).name}: these entries name models or fields that no longer exist; update them: "
            + ", ".join(stale)
        )


HEADER = f"""\
<!-- Generated by `{COMMAND}` from the pydantic models (meshlib/_config/). Do not edit: change a model
     (or the generator's descriptions) and run the command again. tests/test_docs_site.py checks it is current. -->

# Configuration reference

Every key a mesh config (`mesh.yaml`, YAML or JSON) accepts, generated from the pydantic models that validate
it, so it lists exactly what `meshlib validate` and `Mesh.from_file` check. For the ideas behind the keys and
worked examples see [Configuration](../configuration.md), the guides and the [cookbook](../cookbook/index.md);
for a machine-readable form, `meshlib schema` prints the config's JSON Schema.

* **Unknown keys are errors** everywhere, with a suggestion (`unknown key 'retires' (did you mean 'retry'?)`).
* **Paths**: `clusters.NAME` is the value under any cluster's name, `routes[]` any item of the list.
* **Defaults**: "none" means the key is off unless set; "required" keys have no default.

## Durations

Durations are strings with a unit: `10us`, `250ms`, `2s`, `1.5m`, `1h`. A bare number is refused (`timeout: 5`
could mean seconds or milliseconds), and so is anything longer than `8760h` (365 days). Rates use the `limits`
notation (`100/second`); storage URLs are `memory://` or `redis://...`
([Storage URLs](../configuration.md#storage-urls)).
"""


def render() -> str:
    """The reference page, as Markdown."""
    found = sections()
    _check_tables(found)
    anchors = {s.model.__name__: s.anchor for s in found}
    out = [HEADER.rstrip("\n")]
    for section in found:
        out += ["", f"## {'Top level' if section.path == _ROOT_PATH else f'`{section.path}`'}", ""]
        intro = INTROS.get(section.model.__name__) or _markdown(_own_doc(section.model) or "")
        if intro:
            out += [intro, ""]
        if section.also:
            out += ["Also at " + ", ".join(f"`{path}`" for path in section.also) + ".", ""]
        out += _rows(section, anchors)
        links = SEE_ALSO.get(section.model.__name__, [])
        if links:
            out += ["", "See also: " + ", ".join(f"[{text}]({href})" for text, href in links) + "."]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from what the models give")
    args = parser.parse_args(argv)
    text = render()
    relative = TARGET.relative_to(ROOT).as_posix()
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current == text:
            print(f"{relative} is up to date")
            return 0
        diff = difflib.unified_diff(
            current.splitlines(keepends=True), text.splitlines(keepends=True), relative, "generated"
        )
        sys.stdout.writelines(diff)
        print(f"\n{relative} is out of date with the config models: run `{COMMAND}` and commit the result")
        return 1
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {relative}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
