"""The gateway's callbackUrl check, in production and development mode.

IP literals and ``localhost`` resolve without a network; other names use a
fake resolver (this machine has no DNS).
"""

from __future__ import annotations

import asyncio

import pytest

from infra.callback_urls import (
    CallbackHostUnresolved,
    InvalidCallbackUrl,
    Resolver,
    check_callback_url,
    resolve_with_system,
)


async def refusal(
    url: str, *, development: bool = False, resolve: Resolver = resolve_with_system
) -> str | None:
    """The reason ``url`` is refused, or None when it is accepted."""
    try:
        await check_callback_url(url, development=development, timeout=1.0, resolve=resolve)
    except InvalidCallbackUrl as refused:
        return refused.detail
    return None


def resolving_to(*addresses: str) -> Resolver:
    async def resolve(host: str) -> list[str]:
        return list(addresses)

    return resolve


class TestProductionMode:
    async def test_a_public_https_address_is_accepted(self) -> None:
        assert await refusal("https://93.184.216.34/points") is None

    async def test_plain_http_is_refused(self) -> None:
        assert await refusal("http://93.184.216.34/points") == "callbackUrl must use https"

    @pytest.mark.parametrize(
        ("url", "reason"),
        [
            ("https://127.0.0.1/cb", "a loopback address"),
            ("https://[::1]/cb", "a loopback address"),
            ("https://10.0.0.7/cb", "a private address"),
            ("https://192.168.1.1:8443/cb", "a private address"),
            ("https://[::ffff:10.0.0.7]/cb", "a private address"),
            ("https://169.254.169.254/latest", "a link-local address"),
            ("https://[fe80::1]/cb", "a link-local address"),
            ("https://224.0.0.1/cb", "a multicast address"),
            ("https://0.0.0.0/cb", "an unspecified address"),
            ("https://100.64.0.1/cb", "a non-public address"),
        ],
    )
    async def test_an_ip_literal_that_is_not_public_is_refused_with_the_reason(
        self, url: str, reason: str
    ) -> None:
        detail = await refusal(url)

        assert detail is not None and detail.endswith(reason)

    async def test_localhost_is_refused_because_it_resolves_to_loopback(self) -> None:
        detail = await refusal("https://localhost/cb")

        assert detail is not None
        assert detail.startswith("callbackUrl host localhost resolves to")
        assert detail.endswith("a loopback address")

    async def test_a_name_resolving_to_any_private_address_is_refused(self) -> None:
        resolve = resolving_to("93.184.216.34", "10.9.8.7")

        detail = await refusal("https://partner.example/cb", resolve=resolve)

        assert detail == (
            "callbackUrl host partner.example resolves to 10.9.8.7, which is a private address"
        )

    async def test_a_name_that_does_not_resolve_is_refused(self) -> None:
        async def resolve(host: str) -> list[str]:
            raise OSError("Name or service not known")

        detail = await refusal("https://nowhere.example/cb", resolve=resolve)

        assert detail == "callbackUrl host nowhere.example does not resolve"

    async def test_a_lookup_that_takes_too_long_is_a_retryable_error(self) -> None:
        async def resolve(host: str) -> list[str]:
            await asyncio.sleep(10)
            return []

        with pytest.raises(CallbackHostUnresolved) as raised:
            await check_callback_url(
                "https://slow.example/cb", development=False, timeout=0.05, resolve=resolve
            )

        assert raised.value.status == 503

    async def test_a_malformed_port_is_refused(self) -> None:
        detail = await refusal("https://partner.example:99999/cb")

        assert detail is not None and detail.startswith("callbackUrl is not a valid URL")


class TestDevelopmentMode:
    @pytest.mark.parametrize(
        "url", ["http://127.0.0.1:9000/cb", "http://localhost/cb", "https://[::1]/cb"]
    )
    async def test_loopback_over_http_is_accepted(self, url: str) -> None:
        assert await refusal(url, development=True) is None

    @pytest.mark.parametrize(
        ("url", "reason"),
        [
            ("http://10.0.0.7/cb", "a private address"),
            ("http://169.254.169.254/latest", "a link-local address"),
        ],
    )
    async def test_other_non_public_addresses_are_still_refused(
        self, url: str, reason: str
    ) -> None:
        detail = await refusal(url, development=True)

        assert detail is not None and detail.endswith(reason)


class TestHostNames:
    @pytest.mark.parametrize(
        "url", ["http://\u200b", "https://a..example.com/cb", f"https://{'a' * 64}.com"]
    )
    async def test_a_name_idna_refuses_is_an_invalid_callback_url_not_a_crash(
        self, url: str
    ) -> None:
        reason = await refusal(url, development=True, resolve=resolving_to("93.184.216.34"))

        assert reason is not None and "is not a valid host name" in reason
