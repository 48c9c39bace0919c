"""The one SSRF check: the gateway (when it accepts a callbackUrl) and the notifier (when
it connects) refuse the same addresses, over a table of every kind that is not public."""

from __future__ import annotations

import ipaddress

import pytest

from infra.addresses import non_public_reason, refusal_reason
from infra.callback_urls import InvalidCallbackUrl, check_callback_url
from services.notifier.callbacks import RefusedTarget, vet_callback_url
from tests.unit.test_notifier_service import system_resolve

NOT_PUBLIC = [
    ("127.0.0.1", "loopback"),
    ("::1", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.5.4", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),  # cloud metadata services
    ("fe80::1", "link-local"),
    ("fec0::1", "site-local"),  # Python counts this deprecated range as global
    ("fc00::1", "private"),  # unique-local
    ("fd12:3456::1", "private"),
    ("::ffff:10.0.0.1", "private"),  # IPv4-mapped
    ("::ffff:127.0.0.1", "loopback"),
    ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
    ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
    ("64:ff9b:1::1", "NAT64 local-use"),
    ("2002:c0a8:101::1", "private"),  # 6to4 of 192.168.1.1
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"),  # noqa: S104 - an address to refuse, not to bind
    ("::", "unspecified"),
    ("240.0.0.1", "private"),
    ("100.64.0.1", "non-public"),  # carrier-grade NAT
    ("198.18.0.1", "private"),  # benchmarking
]
PUBLIC = ["93.184.216.34", "2606:4700::1111", "64:ff9b::5db8:d822", "2002:5db8:d822::1"]


def url_of(address: str) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"https://{host}/callbacks"


class TestTheTableOfAddresses:
    @pytest.mark.parametrize(("address", "reason"), NOT_PUBLIC)
    def test_each_kind_is_named(self, address: str, reason: str) -> None:
        assert non_public_reason(ipaddress.ip_address(address)) == reason

    @pytest.mark.parametrize("address", PUBLIC)
    def test_public_ones_pass(self, address: str) -> None:
        assert non_public_reason(ipaddress.ip_address(address)) is None

    def test_development_allows_loopback_and_nothing_more(self) -> None:
        assert refusal_reason(ipaddress.ip_address("::ffff:127.0.0.1"), development=True) is None
        assert refusal_reason(ipaddress.ip_address("10.0.0.1"), development=True) == "private"


class TestGatewayAndNotifierAgree:
    @pytest.mark.parametrize(("address", "reason"), NOT_PUBLIC)
    async def test_both_refuse_every_address_that_is_not_public(
        self, address: str, reason: str
    ) -> None:
        with pytest.raises(InvalidCallbackUrl, match=reason):
            await check_callback_url(url_of(address), development=False, timeout=1.0)
        with pytest.raises(RefusedTarget, match=reason):
            await vet_callback_url(url_of(address), development=False, resolve=system_resolve)

    @pytest.mark.parametrize("address", PUBLIC)
    async def test_both_accept_public_https(self, address: str) -> None:
        await check_callback_url(url_of(address), development=False, timeout=1.0)
        target = await vet_callback_url(url_of(address), development=False, resolve=system_resolve)
        assert target.host_header

    async def test_both_refuse_plain_http_outside_development_and_allow_it_in_it(self) -> None:
        url = "http://93.184.216.34/callbacks"
        with pytest.raises(InvalidCallbackUrl, match="https"):
            await check_callback_url(url, development=False, timeout=1.0)
        with pytest.raises(RefusedTarget, match="https"):
            await vet_callback_url(url, development=False, resolve=system_resolve)

        await check_callback_url(url, development=True, timeout=1.0)
        assert await vet_callback_url(url, development=True, resolve=system_resolve)
