"""Where a request came in: scheme, host and path prefix, behind proxies or not.

The base URL a client sees (Location, fullUrl, paging links) is built from the
request. Behind a reverse proxy the request the server receives is not the one
the client sent, so the proxy describes the original in `Forwarded` (RFC 7239) or
the `X-Forwarded-*` headers. Anyone can send those headers, so they are believed
only when the immediate peer is a trusted proxy (EHR_TRUSTED_PROXIES); from any
other peer they are ignored. Each proxy appends its hop to the list, so the list is
read from the right: a hop counts only while the hop after it came from a trusted
proxy, and the client's own claims (the left-most elements, which anyone can send)
never reach the links or the recorded client address. The resulting host is then
checked against EHR_ALLOWED_HOSTS when set, so a forged Host cannot be echoed into links.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache

from starlette.requests import Request

from ..fhir.outcome import FhirError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK = ("127.0.0.0/8", "::1")

# host[:port] where host is a DNS name, an IPv4 address or a bracketed IPv6 address
_HOST = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_-]{0,62}(?:\.[A-Za-z0-9_-]{1,63})*\.?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$")
_PREFIX = re.compile(r"^(?:/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*/?$")
_PROTOS = frozenset({"http", "https"})
_DEFAULT_PORTS = {"http": "80", "https": "443"}


@dataclass(frozen=True)
class Forwarded:
    """One element of a Forwarded header: the request as one proxy received it."""

    for_: str | None = None
    proto: str | None = None
    host: str | None = None
    by: str | None = None


def _split_quoted(value: str, separators: str) -> list[str]:
    """Split on separators outside quoted strings, keeping quotes (RFC 7230 quoted-string)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            current.append(ch)
            escaped = False
        elif quoted and ch == "\\":
            current.append(ch)
            escaped = True
        elif ch == '"':
            current.append(ch)
            quoted = not quoted
        elif ch in separators and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_forwarded(header: str) -> list[Forwarded]:
    """Every element of a Forwarded header, nearest the client first.

    Raises ValueError for a malformed element.
    """
    out = []
    for element in _split_quoted(header, ","):
        if not element.strip():
            continue
        pairs: dict[str, str] = {}
        for pair in _split_quoted(element, ";"):
            if not pair.strip():
                continue
            name, eq, value = pair.partition("=")
            if not eq or not name.strip():
                raise ValueError(f"malformed Forwarded pair '{pair.strip()}'")
            pairs[name.strip().lower()] = _unquote(value)
        out.append(Forwarded(pairs.get("for"), pairs.get("proto"), pairs.get("host"), pairs.get("by")))
    return out


def node_address(node: str | None) -> str | None:
    """The IP address of a Forwarded `for` node or an X-Forwarded-For entry (port and
    IPv6 brackets removed); obfuscated and `unknown` nodes give themselves back."""
    if not node:
        return None
    node = node.strip()
    if node.startswith("["):
        return node[1 : node.find("]")] if "]" in node else node
    if node.count(":") == 1:  # IPv4 with a port (a bare IPv6 address has several colons)
        return node.split(":", 1)[0]
    return node


def client_hop(nodes: list[str | None], trusted: tuple[str, ...]) -> int:
    """Index of the hop that describes the original request: walking left from the
    immediate (trusted) peer's hop, past every hop whose sender was a trusted proxy."""
    i = len(nodes) - 1
    while i > 0 and is_trusted(node_address(nodes[i]), trusted):
        i -= 1
    return i


@lru_cache(maxsize=8)
def networks(entries: tuple[str, ...]) -> tuple[Network, ...] | None:
    """Parsed EHR_TRUSTED_PROXIES; None means every peer ('*')."""
    if "*" in entries:
        return None
    return tuple(ipaddress.ip_network(e.strip(), strict=False) for e in entries if e.strip())


@lru_cache(maxsize=1024)
def is_trusted(peer: str | None, trusted: tuple[str, ...]) -> bool:
    nets = networks(trusted)
    if nets is None:
        return True
    if not peer:
        return False
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False  # a unix socket path or a test client name: not an address we trust
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in net for net in nets)


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """Whether host (port ignored) matches EHR_ALLOWED_HOSTS; `*.example.org` matches subdomains."""
    name = _hostname(host).lower().rstrip(".")
    for pattern in allowed:
        pattern = pattern.strip().lower().rstrip(".")
        if pattern == "*" or pattern == name:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


@lru_cache(maxsize=256)
def _valid_host(host: str) -> bool:
    """Host syntax, remembered: a server sees few distinct Host values (bounded for hostile ones)."""
    return _HOST.match(host) is not None


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if ":" in host else host


def _with_port(host: str, port: str, scheme: str) -> str:
    name = _hostname(host)
    return name if _DEFAULT_PORTS.get(scheme) == port else f"{name}:{port}"


def _bad(header: str, value: str) -> FhirError:
    return FhirError.of(400, "invalid", f"malformed {header} header '{value}'")


_PROXY_HEADERS = frozenset(
    {b"host", b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port"}
    | {b"x-forwarded-prefix"}
)


def _headers_of_interest(request: Request) -> dict[bytes, str]:
    """Host and the proxy headers in one pass over the raw ASGI headers (this runs on every request);
    repeated headers are joined with commas as HTTP allows."""
    found: dict[bytes, str] = {}
    for name, value in request.scope["headers"]:
        if name in _PROXY_HEADERS:
            text = value.decode("latin-1")
            found[name] = f"{found[name]}, {text}" if name in found else text
    return found


def _hop_value(raw: str, hops_back: int) -> str:
    """The value of an X-Forwarded-* list for the hop `hops_back` from its right end
    (a proxy that did not append its own value leaves the list shorter)."""
    values = [v.strip() for v in raw.split(",")]
    return values[max(0, len(values) - 1 - hops_back)]


def _forwarded_origin(request: Request, headers: dict[bytes, str], scheme: str, host: str) -> tuple[str, str, str]:
    """Scheme, host and path prefix as the outermost trusted proxy received them."""
    trusted = request.app.state.settings.trusted_proxies
    hops_back = 0
    forwarded = headers.get(b"forwarded")
    if forwarded:
        try:
            elements = parse_forwarded(forwarded)
        except ValueError:
            raise _bad("Forwarded", forwarded) from None
        if elements:
            hop = elements[client_hop([e.for_ for e in elements], trusted)]
            if hop.proto:
                scheme = hop.proto.lower()
                if scheme not in _PROTOS:
                    raise _bad("Forwarded", forwarded)
            if hop.host:
                host = hop.host
                if not _HOST.match(host):
                    raise _bad("Forwarded", forwarded)
            if hop.for_:
                request.state.client_address = hop.for_  # the original client, for audit
    else:
        clients = headers.get(b"x-forwarded-for")
        if clients:
            nodes: list[str | None] = [c.strip() for c in clients.split(",")]
            i = client_hop(nodes, trusted)
            hops_back = len(nodes) - 1 - i
            request.state.client_address = nodes[i]
        proto = headers.get(b"x-forwarded-proto")
        if proto:
            scheme = _hop_value(proto, hops_back).lower()
            if scheme not in _PROTOS:
                raise _bad("X-Forwarded-Proto", proto)
        forwarded_host = headers.get(b"x-forwarded-host")
        if forwarded_host:
            host = _hop_value(forwarded_host, hops_back)
            if not _HOST.match(host):
                raise _bad("X-Forwarded-Host", forwarded_host)
        port = headers.get(b"x-forwarded-port")
        if port:
            port = _hop_value(port, hops_back)
            if not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
                raise _bad("X-Forwarded-Port", port)
            host = _with_port(host, port, scheme)
    raw_prefix = headers.get(b"x-forwarded-prefix")
    if raw_prefix:
        raw_prefix = _hop_value(raw_prefix, hops_back)
        if not _PREFIX.match(raw_prefix):
            raise _bad("X-Forwarded-Prefix", raw_prefix)
        prefix = raw_prefix.rstrip("/")
    else:
        prefix = ""
    return scheme, host, prefix


def request_origin(request: Request) -> str:
    """`scheme://host[:port][/prefix]` as the client addressed this server; cached per request.

    400 when the Host (or the host a trusted proxy forwarded) is malformed or not allowed.
    """
    state = request.scope.setdefault("state", {})
    cached = state.get("origin")
    if cached is not None:
        return cached
    settings = request.app.state.settings
    scheme = request.scope.get("scheme", "http")
    headers = _headers_of_interest(request)
    host = headers.get(b"host", "")
    if not host:
        server = request.scope.get("server")
        host = f"{server[0]}:{server[1]}" if server else "localhost"
    if not _valid_host(host):
        raise _bad("Host", host)
    prefix = ""
    client = request.scope.get("client")
    if len(headers) > 1 and is_trusted(client[0] if client else None, settings.trusted_proxies):
        scheme, host, prefix = _forwarded_origin(request, headers, scheme, host)
    allowed = settings.allowed_hosts
    if allowed and not host_allowed(host, allowed):
        raise FhirError.of(400, "invalid", f"host '{_hostname(host)}' is not one this server answers to")
    origin = f"{scheme}://{host}{prefix}"
    state["origin"] = origin
    return origin
