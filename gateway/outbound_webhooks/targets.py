"""Where webhooks may go: the SSRF guard.

A webhook URL is chosen by a tenant admin, but Parley makes the request from inside its own
network, so a URL naming an internal address (a database, a cloud metadata service at
169.254.169.254, localhost) would let an admin probe or poke it. Parley therefore refuses targets
whose address is not globally routable: private, loopback, link-local, shared, reserved and
multicast ranges, for IPv4 and IPv6 (including IPv4-mapped IPv6). The check runs when the
subscription is saved (on the literal address or the name's current DNS answer) and again at
every delivery inside the HTTP client's resolver, on the very addresses it then connects to, so
a name re-pointed after saving (DNS rebinding) is caught too. Redirects are not followed.

`PARLEY_WEBHOOKS_ALLOW_PRIVATE=1` lifts the address check (an on-premises integration, tests);
`PARLEY_WEBHOOKS_ALLOW_HTTP=1` allows plain http://, which is otherwise allowed only for loopback
targets when private targets are allowed. Without it, https:// is required.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import ResolveResult
from aiohttp.resolver import ThreadedResolver

from parley.settings import WebhookSettings


class TargetRefused(ValueError):
    """The URL may not be a webhook target; the message says why."""


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, policy: WebhookSettings) -> str:
    """The URL if it is an acceptable target by its form; TargetRefused otherwise."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise TargetRefused("must be an absolute https:// URL")
    if parts.username or parts.password:
        raise TargetRefused("must not carry credentials; the signature authenticates Parley")
    host = parts.hostname
    loopback_ok = policy.allow_private_targets and _loopback_host(host)
    if parts.scheme == "http" and not policy.allow_http and not loopback_ok:
        raise TargetRefused("must use https://")
    if not policy.allow_private_targets:
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if (literal is not None and not _public(host)) or host == "localhost" or host.endswith(".localhost"):
            raise TargetRefused("must not point at a private, loopback or link-local address")
    return url.strip()


async def check_resolved(url: str, policy: WebhookSettings) -> None:
    """Refuse a host name whose addresses are not public (when saving; deliveries check again)."""
    if policy.allow_private_targets:
        return
    host = urlsplit(url).hostname or ""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return  # not resolvable now: deliveries will fail and retry, and are checked then
    if any(not _public(str(info[4][0])) for info in infos):
        raise TargetRefused(f"{host} resolves to a private, loopback or link-local address")


class GuardedResolver(ThreadedResolver):
    """aiohttp's resolver, refusing names that resolve to addresses the policy forbids."""

    def __init__(self, policy: WebhookSettings) -> None:
        super().__init__()
        self.policy = policy

    async def resolve(self, host: str, port: int = 0, family: Any = socket.AF_INET) -> list[ResolveResult]:
        results = await super().resolve(host, port, family)
        if not self.policy.allow_private_targets:
            for result in results:
                if not _public(result["host"]):
                    raise OSError(f"{host} resolves to {result['host']}, which is not a public address")
        return results
