"""Channel addresses as people write them, as Parley stores them, and as duplicates are spotted.

Two levels of sameness:
- *exact*: the stored address. Phones are E.164 (a national number is read in the tenant's default
  region), emails are lower-cased after `email-validator`'s normalisation. Identities are unique on
  it, so an SMS, a WhatsApp message and a call from one number reach one contact by themselves.
- *likely*: the `match_key`. It also drops what people don't mean as a different address: an
  email's `+tag`, dots in a Gmail local part (Gmail ignores them: one mailbox), googlemail.com,
  and the mobile prefixes WhatsApp adds or drops (Mexico's `1` after +52, Brazil's ninth digit).
  Contacts sharing a match key are *suggested* for merging, never joined automatically: two
  people may share a plus-addressed mailbox, a human should decide.
"""

from __future__ import annotations

import contextlib

import phonenumbers
from email_validator import EmailNotValidError, validate_email

PHONE = "phone"
EMAIL = "email"

_GMAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})


def normalise_phone(value: str, region: str | None = None) -> str:
    """E.164 for a valid number, international or national in `region`; ValueError otherwise."""
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        where = f" or national in {region}" if region else ""
        raise ValueError(f"{value!r} is not a phone number in international format{where}") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError(f"{value!r} is not a valid phone number")
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def normalise_email(value: str) -> str:
    """The address as stored: syntax checked, domain IDNA-normalised, lower-cased; ValueError otherwise."""
    try:
        checked = validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError as e:
        raise ValueError(f"{value!r} is not an email address: {e}") from None
    # Identities match case-insensitively: mail systems treat Ann@ and ann@ as one mailbox.
    return checked.normalized.lower()


def email_domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


def _phone_key(address: str) -> str | None:
    try:
        number = phonenumbers.parse(address, None)
    except phonenumbers.NumberParseException:
        return None
    national = str(number.national_number)
    if number.country_code == 52 and len(national) == 11 and national.startswith("1"):
        national = national[1:]  # +52 1 55…: the old mobile prefix WhatsApp still reports
    elif number.country_code == 55 and len(national) == 11 and national[2] == "9":
        national = national[:2] + national[3:]  # Brazil's ninth mobile digit, present or not
    return f"phone:+{number.country_code}{national}"


def _email_key(address: str) -> str | None:
    local, at, domain = address.strip().lower().rpartition("@")
    if not at or not local:
        return None
    local = local.split("+", 1)[0] or local
    if domain in _GMAIL_DOMAINS:
        domain = "gmail.com"
        local = local.replace(".", "")
    return f"email:{local}@{domain}"


def match_key(kind: str, address: str) -> str | None:
    """The key likely duplicates share, for phones and emails; None for provider ids (exact only)."""
    if kind == PHONE:
        return _phone_key(address)
    if kind == EMAIL:
        return _email_key(address)
    return None


def search_keys(text: str, region: str | None) -> list[tuple[str, str]]:
    """The identities (kind, address) a search text could be, exactly: an email or a phone number."""
    text = text.strip()
    found: list[tuple[str, str]] = []
    if "@" in text:
        with contextlib.suppress(ValueError):
            found.append((EMAIL, normalise_email(text)))
    elif sum(ch.isdigit() for ch in text) >= 6:
        with contextlib.suppress(ValueError):
            found.append((PHONE, normalise_phone(text, region)))
    return found
