"""Which HTTP proxy an upstream is reached through, chosen once when its engine is built.

As httpx and curl do: ``http_proxy`` / ``HTTP_PROXY`` for http:// upstreams, ``https_proxy`` / ``HTTPS_PROXY``
for https:// ones, ``all_proxy`` / ``ALL_PROXY`` for either when those are unset, and none for a host that
``no_proxy`` / ``NO_PROXY`` names (read with ``urllib.request``, which gives the lowercase spelling precedence).
Only http:// proxies are supported; aiohttp does the rest (absolute-form requests through the proxy for
http:// upstreams, a ``CONNECT`` tunnel for https:// ones, credentials in the proxy URL sent as
``Proxy-Authorization``).

Why not aiohttp's own ``trust_env=True``: it looks the proxy up in a worker thread on every request, and reads
``~/.netrc`` in another, which costs more than the rest of a proxied request; and it ignores ``ALL_PROXY``.
The environment is read once per engine instead, when it is built.
"""

from __future__ import annotations

from urllib.parse import urlsplit
from urllib.request import getproxies_environment, proxy_bypass_environment  # type: ignore[attr-defined]


def check(url: str, source: str = "the proxy argument") -> str:
    """``url`` as an http:// proxy URL (scheme added when missing); ValueError for any other scheme."""
    full = url if "://" in url else "http://" + url
    parts = urlsplit(full)
    if parts.scheme.lower() != "http" or not parts.hostname:
        raise ValueError(f"unsupported proxy {url!r} (from {source}): only http:// proxies are supported")
    return full


def select(proxy: str | bool, base_url: str) -> str | None:
    """The proxy URL for the upstream ``base_url``: ``proxy`` itself when a URL, from the environment when True,
    none when False."""
    if isinstance(proxy, str):
        return check(proxy)
    if not proxy:
        return None
    parts = urlsplit(base_url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    proxies = getproxies_environment()
    url = proxies.get(scheme) or proxies.get("all")
    if not url or proxy_bypass_environment(f"{parts.hostname}:{port}", proxies):
        return None
    name = f"{scheme}_proxy" if proxies.get(scheme) else "all_proxy"
    return check(url, f"{name} / {name.upper()} in the environment")
