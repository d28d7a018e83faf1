"""Which callback URLs the dispatcher may call: an allowlist of hosts/networks, and a default deny list.

Rules, in order, for every address a callback host resolves to:

1. an address inside an ``allow`` network, or a host named in ``allow``, is allowed (this is how tests and
   deployments open loopback or a private service);
2. otherwise, when ``allow`` is non-empty the address is refused (an allowlist is exclusive);
3. otherwise the address is refused if it is in a denied network: link-local (incl. the cloud metadata
   address 169.254.169.254), loopback, unspecified, multicast, reserved.

Only ``http`` and ``https`` are accepted. The check runs at creation (for URL shape and literal addresses)
and before each delivery against the addresses DNS returns then. Known gap: the HTTP client resolves the
name again when it connects, so a DNS answer that changes in between (rebinding) is not caught.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DENIED_BY_DEFAULT: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.0.0/16",  # link-local, incl. 169.254.169.254 (cloud metadata)
        "fe80::/10",
        "127.0.0.0/8",
        "::1/128",
        "0.0.0.0/8",
        "::/128",
        "224.0.0.0/4",
        "ff00::/8",
        "240.0.0.0/4",
        "fd00:ec2::254/128",  # AWS metadata over IPv6
    )
)


class TargetRefused(ValueError):
    """The callback URL is malformed or points somewhere the policy refuses; the message says which rule."""


@dataclass(frozen=True)
class TargetPolicy:
    allow_networks: tuple[IPNetwork, ...] = ()
    allow_hosts: frozenset[str] = frozenset()
    deny_networks: tuple[IPNetwork, ...] = field(default=DENIED_BY_DEFAULT)

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> TargetPolicy:
        """Build from config entries: each a CIDR / address (``127.0.0.0/8``, ``10.1.2.3``) or a host name."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(tuple(networks), frozenset(hosts))

    @property
    def exclusive(self) -> bool:
        return bool(self.allow_networks or self.allow_hosts)

    def check_address(self, host: str, address: IPAddress) -> None:
        if any(address in n for n in self.allow_networks if n.version == address.version):
            return
        if host in self.allow_hosts:
            return
        if self.exclusive:
            raise TargetRefused(f"callback host {host} ({address}) is not in the allowlist")
        if any(address in n for n in self.deny_networks if n.version == address.version):
            raise TargetRefused(f"callback host {host} ({address}) is in a refused network (link-local/loopback/...)")

    def check_url(self, url: str) -> str:
        """Validate the URL's shape and, for a literal address or an allowlist, the host; return the host."""
        host = callback_host(url)
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            if self.exclusive and host not in self.allow_hosts and not self.allow_networks:
                raise TargetRefused(f"callback host {host} is not in the allowlist") from None
            return host
        self.check_address(host, address)
        return host

    async def check_resolved(self, url: str, resolve: Callable[[str], Awaitable[list[str]]]) -> None:
        """Check every address ``resolve(host)`` returns (the dispatcher passes a DNS lookup)."""
        host = self.check_url(url)
        try:
            ipaddress.ip_address(host)
            return  # a literal address was fully checked by check_url
        except ValueError:
            pass
        if host in self.allow_hosts:
            return
        addresses = await resolve(host)
        if not addresses:
            raise TargetRefused(f"callback host {host} does not resolve")
        for text in addresses:
            self.check_address(host, ipaddress.ip_address(text.split("%")[0]))


def callback_host(url: str) -> str:
    """The lower-case host of an http(s) URL; TargetRefused names what is wrong otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise TargetRefused(f"callback_url is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise TargetRefused("callback_url must use http or https")
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise TargetRefused("callback_url has no host")
    if parts.username or parts.password:
        raise TargetRefused("callback_url must not carry credentials")
    del port
    return host
