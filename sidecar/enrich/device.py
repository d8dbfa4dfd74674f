"""A short, human description of the device behind a User-Agent: "Chrome on Windows".

Parsing uses ua-parser with its Rust matcher (``ua-parser-rs``) when that is installed
and its pure-Python matcher otherwise. The cache is ours, an LRU bounded by
``cache_size``: the same few hundred User-Agent strings arrive over and over.
"""

from __future__ import annotations

import functools
import unicodedata

from ua_parser import BasicResolver, Domain, Resolver, load_builtins, load_lazy_builtins

UNKNOWN_DEVICE = "Unknown device"
UNKNOWN_BROWSER = "Unknown browser"
# ua-parser's regexes are not linear in the input; a real User-Agent fits in far less.
MAX_USER_AGENT_LENGTH = 512
MAX_DESCRIPTION_LENGTH = 100
# Families come from the User-Agent itself (e.g. "<anything>/1 CFNetwork"): cap each part so
# a long one cannot push the other out of the description.
_MAX_PART_LENGTH = 48

_UNKNOWN_FAMILY = "Other"
# Embedded web views are apps, not the browser whose engine they borrow.
_FAMILY_NAMES = {
    "Mobile Safari UI/WKWebView": "WebView",
    "Chrome Mobile WebView": "WebView",
}
_OS_NAMES = {
    "Mac OS X": "macOS",
}
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs"})


class DeviceParser:
    """Describe User-Agent strings; build one per application and share it."""

    def __init__(self, cache_size: int = 10_000) -> None:
        if cache_size < 0:
            raise ValueError(f"cache_size must be 0 or more, got {cache_size}")
        self._resolver = _best_resolver()
        self._describe_cached = functools.lru_cache(maxsize=cache_size)(self._describe)

    def describe(self, user_agent: str | None) -> str:
        """Return e.g. "Chrome on Windows", "curl" or "Unknown device"; never raises."""
        if not user_agent:
            return UNKNOWN_DEVICE
        return self._describe_cached(user_agent[:MAX_USER_AGENT_LENGTH])

    def _describe(self, user_agent: str) -> str:
        try:
            if not user_agent.isascii():
                # Undecodable header bytes arrive as lone surrogates, which the Rust
                # matcher refuses; "?" in their place keeps the rest of the string useful.
                user_agent = user_agent.encode("utf-8", "replace").decode("utf-8")
            result = self._resolver(user_agent, Domain.USER_AGENT | Domain.OS)
        except Exception:  # a hostile header must never fail a request
            return UNKNOWN_DEVICE
        browser = _browser_name(result.user_agent.family if result.user_agent else None)
        os = _os_name(result.os.family if result.os else None)
        if browser and os and browser != os:
            text = f"{browser} on {os}"
        elif browser:
            text = browser  # a client without an OS is a tool: "curl", "okhttp"
        elif os:
            text = f"{UNKNOWN_BROWSER} on {os}"
        else:
            text = UNKNOWN_DEVICE
        return text[:MAX_DESCRIPTION_LENGTH].strip()


def _best_resolver() -> Resolver:
    try:
        # Imported here because it imports ua-parser-rs, an optional accelerator.
        from ua_parser.regex import Resolver as RegexResolver
    except ImportError:
        return BasicResolver(load_builtins())
    # The Rust matcher compiles the patterns itself; lazy matchers skip compiling them twice.
    resolver: Resolver = RegexResolver(load_lazy_builtins())
    return resolver


def _browser_name(family: str | None) -> str:
    if not family or family == _UNKNOWN_FAMILY:
        return ""
    if family in _FAMILY_NAMES:
        return _FAMILY_NAMES[family]
    # "Chrome Mobile" -> "Chrome", "Mobile Safari" -> "Safari", "Chrome Mobile iOS" and
    # "Firefox iOS" -> "Chrome"/"Firefox": the OS part already says it is a phone.
    words = [word for word in _clean(family).split() if word != "Mobile"]
    if len(words) > 1 and words[-1] == "iOS":
        words.pop()
    name = " ".join(words) or " ".join(_clean(family).split())
    return name[:_MAX_PART_LENGTH].strip()


def _os_name(family: str | None) -> str:
    if not family or family == _UNKNOWN_FAMILY:
        return ""
    name = " ".join(_clean(_OS_NAMES.get(family, family)).split())
    return name[:_MAX_PART_LENGTH].strip()


def _clean(text: str) -> str:
    """Drop control, format (bidi overrides) and surrogate characters."""
    return "".join(ch for ch in text if unicodedata.category(ch) not in _UNPRINTABLE)
