"""Addresses an account owns are spelt as the gateway spells the addresses of messages."""

import pytest

from common.addresses import domain_of, normalize_owned_address


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("+12016661234", "+12016661234"),
        ("(201) 666-1234", "+12016661234"),
        (" +1 201 666 1234 ", "+12016661234"),
        ("User@UseHatchApp.com", "user@usehatchapp.com"),
        ("@UseHatchApp.COM", "@usehatchapp.com"),
        ("@Exämple.com", "@exämple.com"),
    ],
)
def test_an_owned_address_is_normalized(written: str, stored: str) -> None:
    assert normalize_owned_address(written, "US") == stored


@pytest.mark.parametrize(
    "written", ["", "@", "@@example.com", "@localhost", "user@", "not-an-address", "+1 555", "@a b.com"]
)
def test_what_is_no_address_is_refused(written: str) -> None:
    with pytest.raises(ValueError, match="not a"):
        normalize_owned_address(written, "US")


def test_a_number_without_a_country_code_is_read_in_the_region_given() -> None:
    assert normalize_owned_address("020 7946 0018", "GB") == "+442079460018"


def test_the_domain_an_email_falls_under() -> None:
    assert domain_of("sales@example.com") == "@example.com"
    assert domain_of("+12016661234") is None
