"""Which URLs scenes may be fetched from: listed hosts only, and private addresses only when listed themselves."""

from __future__ import annotations

import ipaddress

import pytest

from app.core.url_policy import UrlPolicy, UrlRefused


def test_empty_policy_refuses_everything() -> None:
    with pytest.raises(UrlRefused, match="WAGON_FETCH_ALLOWED_HOSTS is empty"):
        UrlPolicy.from_entries([]).check_url("https://data.vendor.example/a.tif")


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("https://other.example/a.tif", "is not allowed"),
        ("ftp://data.vendor.example/a.tif", "scheme"),
        ("https://user:pw@data.vendor.example/a.tif", "credentials"),
        ("https://data.vendor.example:99999/a.tif", "not a valid URL"),
        ("https:///a.tif", "no host"),
        ("http://10.1.3.4/a.tif", "is not allowed"),
    ],
)
def test_refused_urls_say_why(url: str, needle: str) -> None:
    policy = UrlPolicy.from_entries(["data.vendor.example", "10.1.2.0/24"])
    with pytest.raises(UrlRefused, match=needle):
        policy.check_url(url)


def test_listed_names_and_networks_pass() -> None:
    policy = UrlPolicy.from_entries(["Data.Vendor.Example.", "10.1.2.0/24", "[::1]"])
    assert policy.check_url("https://data.vendor.example/a.tif") == ("data.vendor.example", 443)
    assert policy.check_url("http://10.1.2.7:8080/a.tif") == ("10.1.2.7", 8080)
    assert policy.check_url("http://[::1]/a.tif") == ("::1", 80)


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.5", "169.254.169.254", "192.168.1.1", "::1", "fe80::1"])
def test_a_name_may_not_lead_to_a_private_address(address: str) -> None:
    policy = UrlPolicy.from_entries(["data.vendor.example"])
    with pytest.raises(UrlRefused, match="listed"):
        policy.check_address("data.vendor.example", ipaddress.ip_address(address))


def test_listed_private_addresses_and_public_ones_pass() -> None:
    policy = UrlPolicy.from_entries(["data.vendor.example", "127.0.0.1"])
    policy.check_address("data.vendor.example", ipaddress.ip_address("8.8.8.8"))
    policy.check_address("x", ipaddress.ip_address("127.0.0.1"))
    policy.check_address("x", ipaddress.ip_address("::ffff:127.0.0.1"))  # IPv4-mapped: the same address
    assert policy.resolve("127.0.0.1", 80) == ["127.0.0.1"]
    with pytest.raises(UrlRefused, match="loopback"):
        UrlPolicy.from_entries(["localhost"]).resolve("localhost", 80)
