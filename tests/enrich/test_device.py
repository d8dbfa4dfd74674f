"""Device descriptions from real User-Agent strings, and what hostile ones cannot do."""

from __future__ import annotations

import unicodedata

import pytest

from sidecar.enrich.device import (
    MAX_DESCRIPTION_LENGTH,
    MAX_USER_AGENT_LENGTH,
    UNKNOWN_DEVICE,
    DeviceParser,
)

CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)

# (User-Agent, description) for current browsers and common non-browser clients.
REAL_USER_AGENTS: dict[str, tuple[str, str]] = {
    "chrome-windows": (CHROME_WINDOWS, "Chrome on Windows"),
    "firefox-windows": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
        "Firefox on Windows",
    ),
    "edge-windows": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.2903.70",
        "Edge on Windows",
    ),
    "opera-windows": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36 OPR/115.0.0.0",
        "Opera on Windows",
    ),
    "chrome-macos": (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36",
        "Chrome on macOS",
    ),
    "safari-macos": (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/18.1 Safari/605.1.15",
        "Safari on macOS",
    ),
    "firefox-linux": (
        "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
        "Firefox on Linux",
    ),
    "firefox-ubuntu": (
        "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
        "Firefox on Ubuntu",
    ),
    "chrome-chromeos": (
        "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36",
        "Chrome on Chrome OS",
    ),
    "firefox-android": (
        "Mozilla/5.0 (Android 14; Mobile; rv:133.0) Gecko/133.0 Firefox/133.0",
        "Firefox on Android",
    ),
    "chrome-android": (
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Mobile Safari/537.36",
        "Chrome on Android",
    ),
    "samsung-internet": (
        "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36",
        "Samsung Internet on Android",
    ),
    "android-webview": (
        "Mozilla/5.0 (Linux; Android 13; SM-G991B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Version/4.0 Chrome/120.0.0.0 Mobile Safari/537.36",
        "WebView on Android",
    ),
    "safari-iphone": (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.6 Mobile/15E148 Safari/604.1",
        "Safari on iOS",
    ),
    "safari-ipad": (
        "Mozilla/5.0 (iPad; CPU OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.6 Mobile/15E148 Safari/604.1",
        "Safari on iOS",
    ),
    "chrome-iphone": (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_7 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) CriOS/131.0.6778.73 Mobile/15E148 Safari/604.1",
        "Chrome on iOS",
    ),
    "firefox-iphone": (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) FxiOS/133.0 Mobile/15E148 Safari/605.1.15",
        "Firefox on iOS",
    ),
    "ios-in-app-webview": (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Mobile/15E148",
        "WebView on iOS",
    ),
    "curl": ("curl/8.5.0", "curl"),
    "okhttp": ("okhttp/4.12.0", "okhttp"),
    "python-requests": ("python-requests/2.32.3", "Python Requests"),
    "go-http-client": ("Go-http-client/1.1", "Go-http-client"),
    "go-http-client-2": ("Go-http-client/2.0", "Go-http-client"),
    "wget": ("Wget/1.21.4", "Wget"),
    "postman": ("PostmanRuntime/7.42.0", "PostmanRuntime"),
    "googlebot": (
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Googlebot",
    ),
    "android-without-browser": ("Mozilla/5.0 (Linux; Android 14)", "Android"),
    "browser-unknown-os-known": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
        "Unknown browser on Windows",
    ),
    "ios-app-cfnetwork": ("MyApp/3 CFNetwork/1498.700.2 Darwin/23.6.0", "MyApp on iOS"),
}


@pytest.fixture(scope="module")
def parser() -> DeviceParser:
    return DeviceParser()


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [pytest.param(*case, id=name) for name, case in REAL_USER_AGENTS.items()],
)
def test_real_user_agents(parser: DeviceParser, user_agent: str, expected: str) -> None:
    """Real browsers read "<browser> on <OS>"; clients without an OS read as their family."""
    assert parser.describe(user_agent) == expected


@pytest.mark.parametrize(
    "user_agent",
    [
        pytest.param(None, id="none"),
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("hello world", id="words"),
        pytest.param("-", id="dash"),
        pytest.param("python-httpx/0.27.0", id="client-ua-parser-does-not-know"),
        pytest.param("\x00\x01\x02\x1b[31m", id="control-only"),
        pytest.param("Браузер/1.0", id="cyrillic"),
        pytest.param("🦊🦊🦊", id="emoji"),
        pytest.param("x" * 10_000, id="10kb"),
    ],
)
def test_unparseable_is_unknown_device(parser: DeviceParser, user_agent: str | None) -> None:
    """Nothing recognisable, empty or missing reads "Unknown device"."""
    assert parser.describe(user_agent) == UNKNOWN_DEVICE


def test_long_user_agent_is_truncated_before_parsing(parser: DeviceParser) -> None:
    """Only the first 512 characters are parsed: a browser token after them is not seen."""
    padded = "Mozilla/5.0 " + "x" * MAX_USER_AGENT_LENGTH + " Firefox/133.0"
    assert parser.describe(padded) == UNKNOWN_DEVICE
    assert parser.describe(CHROME_WINDOWS + " " + "x" * 10_000) == "Chrome on Windows"


def test_non_ascii_does_not_disturb_parsing(parser: DeviceParser) -> None:
    """Non-ASCII text around a real User-Agent leaves the description intact."""
    assert parser.describe(CHROME_WINDOWS + " ünïcødé 日本語") == "Chrome on Windows"


def test_undecodable_bytes_do_not_disturb_parsing(parser: DeviceParser) -> None:
    """Lone surrogates (undecodable header bytes) are replaced, not allowed to break parsing."""
    assert parser.describe(CHROME_WINDOWS + " \udcff\udcfe") == "Chrome on Windows"


def test_control_characters_in_user_agent_are_ignored(parser: DeviceParser) -> None:
    """Control characters in an otherwise real User-Agent do not reach the description."""
    assert parser.describe("curl/8.5.0\x00\x1b[31m\r\n") == "curl"


@pytest.mark.parametrize(
    "user_agent",
    [
        pytest.param("Evil\x1b[2J\x07App/3 CFNetwork/1.0 Darwin/20.0.0", id="escape-sequence"),
        pytest.param("Evil\u202eppA/3 CFNetwork/1.0 Darwin/20.0.0", id="bidi-override"),
        pytest.param("Evil\u200b\u2066App/3 CFNetwork/1.0 Darwin/20.0.0", id="zero-width"),
        pytest.param("Evil\x00App/3 CFNetwork/1.0 Darwin/20.0.0", id="nul"),
        pytest.param("Evil\x85\x9bApp/3 CFNetwork/1.0 Darwin/20.0.0", id="c1-controls"),
    ],
)
def test_control_characters_are_stripped_from_description(
    parser: DeviceParser, user_agent: str
) -> None:
    """A family copied from the User-Agent loses control and format characters."""
    description = parser.describe(user_agent)
    assert description.startswith("Evil")
    assert description.endswith(" on iOS")
    assert all(unicodedata.category(ch) not in ("Cc", "Cf", "Cs") for ch in description)


def test_description_is_capped(parser: DeviceParser) -> None:
    """A huge family copied from the User-Agent is cut so the description fits 100 characters."""
    description = parser.describe("A" * 300 + "/1 CFNetwork/1.0 Darwin/20.0.0")
    assert len(description) <= MAX_DESCRIPTION_LENGTH
    assert description.endswith(" on iOS")


def test_description_is_capped_without_os(parser: DeviceParser) -> None:
    """A long crawler name with no OS is capped too."""
    description = parser.describe("A" * 50 + "Crawl" + "a" * 50 + "/1.0")
    assert description.startswith("AAAA")
    assert len(description) <= MAX_DESCRIPTION_LENGTH


@pytest.mark.parametrize(
    "user_agent",
    [
        "(" * 5000,
        "Mozilla/5.0 (" + "; " * 5000 + ")",
        "Mozilla/5.0 " + "Chrome/" * 2000,
        "\x00" * 10_000,
        "\udcff" * 10_000,
        "A" * 200 + "Bot/1.0" + "\x00" * 500,
    ],
    ids=["parens", "semicolons", "repeated-token", "nuls", "surrogates", "bot-then-nuls"],
)
def test_hostile_input_never_raises(parser: DeviceParser, user_agent: str) -> None:
    """Pathological strings give a short printable description, never an exception."""
    description = parser.describe(user_agent)
    assert 0 < len(description) <= MAX_DESCRIPTION_LENGTH
    assert description.isprintable()


def test_cache_is_bounded() -> None:
    """The cache keeps at most cache_size entries and serves repeats from memory."""
    parser = DeviceParser(cache_size=3)
    for n in range(10):
        parser.describe(f"curl/8.{n}.0")
    parser.describe("curl/8.9.0")
    info = parser._describe_cached.cache_info()  # the cache is private; its bound is the promise
    assert info.currsize == 3
    assert info.maxsize == 3
    assert info.hits == 1


def test_cache_key_is_the_truncated_user_agent() -> None:
    """Long strings sharing their first 512 characters share one cache entry."""
    parser = DeviceParser(cache_size=10)
    parser.describe(CHROME_WINDOWS + "x" * 1000)
    parser.describe(CHROME_WINDOWS + "x" * 2000)
    assert parser._describe_cached.cache_info().currsize == 1


def test_cache_size_zero_disables_caching() -> None:
    """A cache size of 0 still describes correctly and stores nothing."""
    parser = DeviceParser(cache_size=0)
    assert parser.describe(CHROME_WINDOWS) == "Chrome on Windows"
    assert parser._describe_cached.cache_info().currsize == 0


def test_negative_cache_size_is_refused() -> None:
    """A negative cache size is a programming error and raises ValueError."""
    with pytest.raises(ValueError, match="cache_size"):
        DeviceParser(cache_size=-1)


def test_rust_matcher_is_used_when_installed(parser: DeviceParser) -> None:
    """With ua-parser-rs installed, the Rust-backed resolver does the matching."""
    from ua_parser.regex import Resolver as RegexResolver

    assert isinstance(parser._resolver, RegexResolver)
