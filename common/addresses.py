"""One spelling per address: the gateway normalizes what clients and providers send, bin/admin what
operators register, so an address an account owns matches the messages that use it.

Phones become E.164 (phonenumbers), emails are validated (email-validator) and lower-cased, and an
email domain an account owns as a whole is written `@domain`, lower-cased.
"""

from functools import lru_cache

import phonenumbers
from email_validator import EmailNotValidError, validate_email

DOMAIN_MARK = "@"

# The same addresses come back message after message, and parsing one (60 us for a phone) was a good
# part of a webhook's CPU. lru_cache keeps no exceptions, so only valid addresses take room.
_CACHED_ADDRESSES = 16_384


@lru_cache(maxsize=_CACHED_ADDRESSES)
def normalize_phone(value: str, default_region: str) -> str:
    """E.164; a number without a + country code is read in `default_region`. ValueError if it is none."""
    try:
        number = phonenumbers.parse(value, default_region)
    except phonenumbers.NumberParseException as error:
        raise ValueError(f"not a phone number ({error})") from error
    if not phonenumbers.is_valid_number(number):
        raise ValueError("not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@lru_cache(maxsize=_CACHED_ADDRESSES)
def normalize_email(value: str) -> str:
    try:
        address = validate_email(value, check_deliverability=False)
    except EmailNotValidError as error:
        raise ValueError(f"not a valid email address ({error})") from error
    return address.normalized.lower()


def normalize_domain(value: str) -> str:
    """`@example.com` as an account owns it: the domain of an email address, lower-cased."""
    if not value.startswith(DOMAIN_MARK):
        raise ValueError(f"an email domain is written {DOMAIN_MARK}domain")
    try:
        # Validating a sample address holds the domain to exactly the rules its addresses meet.
        address = validate_email(f"postmaster{value}", check_deliverability=False)
    except EmailNotValidError as error:
        raise ValueError(f"not a valid email domain ({error})") from error
    return DOMAIN_MARK + address.domain.lower()


def normalize_owned_address(value: str, default_region: str) -> str:
    """An address an account may own: `@domain`, an email address, or a phone number."""
    value = value.strip()
    if value.startswith(DOMAIN_MARK):
        return normalize_domain(value)
    if DOMAIN_MARK in value:
        return normalize_email(value)
    return normalize_phone(value, default_region)


def domain_of(email: str) -> str | None:
    """The `@domain` an account may own for a normalized email address; None for a phone number."""
    local, mark, domain = email.rpartition(DOMAIN_MARK)
    return f"{mark}{domain}" if local and mark else None
