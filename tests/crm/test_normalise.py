"""Phone and email normalisation, match keys and the free-mail list: properties, not examples alone."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crm_core.companies import business_domain, company_name
from crm_core.identities import match_key, normalise_email, normalise_phone, search_keys

REGIONS = ["US", "GB", "DE", "FR", "BR", "MX", "IN", "AU", "NG", "JP"]


@st.composite
def phone_numbers(draw: st.DrawFn) -> phonenumbers.PhoneNumber:
    region = draw(st.sampled_from(REGIONS))
    kind = draw(
        st.sampled_from([phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE])
    )
    example = phonenumbers.example_number_for_type(region, kind)
    assert example is not None
    # Vary the last digits of the example; keep only numbers libphonenumber calls valid.
    national = str(example.national_number)
    tail = draw(st.integers(0, 999))
    number = phonenumbers.parse(f"+{example.country_code}{national[:-3]}{tail:03d}", None)
    if not phonenumbers.is_valid_number(number):
        number = example
    return number


@given(phone_numbers(), st.sampled_from(["national", "international", "e164", "rfc3966"]))
@settings(max_examples=200, deadline=None)
def test_a_number_written_any_way_normalises_to_one_e164(
    number: phonenumbers.PhoneNumber, style: str
) -> None:
    region = phonenumbers.region_code_for_number(number)
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    written = phonenumbers.format_number(
        number,
        {
            "national": phonenumbers.PhoneNumberFormat.NATIONAL,
            "international": phonenumbers.PhoneNumberFormat.INTERNATIONAL,
            "e164": phonenumbers.PhoneNumberFormat.E164,
            "rfc3966": phonenumbers.PhoneNumberFormat.RFC3966,
        }[style],
    )
    assert normalise_phone(written, region) == e164
    if style != "national":
        assert normalise_phone(written) == e164  # international forms need no region
    assert match_key("phone", e164) == match_key("phone", normalise_phone(written, region))


def test_national_numbers_need_a_region_and_junk_is_refused() -> None:
    assert normalise_phone("(415) 555-0123", "US") == "+14155550123"
    assert normalise_phone("020 7946 0018", "GB") == "+442079460018"
    assert normalise_phone("0044 20 7946 0018", "GB") == "+442079460018"
    for bad, region in [
        ("020 7946 0018", None),
        ("555-0123", None),
        ("+1 000 000 0000", None),
        ("call me", "US"),
    ]:
        with pytest.raises(ValueError):
            normalise_phone(bad, region)


def test_whatsapp_mobile_prefixes_share_a_match_key() -> None:
    assert match_key("phone", "+5215512345678") == match_key("phone", "+525512345678")
    assert match_key("phone", "+5511987654321") == match_key("phone", "+551187654321")
    assert match_key("phone", "+14155550123") != match_key("phone", "+14155550124")


local_parts = st.from_regex(r"[a-z][a-z0-9]{0,10}(\.[a-z0-9]{1,5}){0,2}", fullmatch=True)


@given(local_parts, st.sampled_from(["acme.com", "gmail.com", "example.org"]), st.text("abcxyz", max_size=6))
@settings(max_examples=200, deadline=None)
def test_case_and_plus_tags_never_make_another_match_key(local: str, domain: str, tag: str) -> None:
    plain = normalise_email(f"{local}@{domain}")
    shouting = normalise_email(f"{local.upper()}@{domain.upper()}")
    tagged = normalise_email(f"{local}+{tag}@{domain}") if tag else plain
    assert shouting == plain  # exact identity: case never matters
    assert match_key("email", tagged) == match_key("email", plain)


def test_gmail_dots_and_googlemail_are_one_mailbox_other_domains_keep_their_dots() -> None:
    assert match_key("email", "ann.lee@gmail.com") == match_key("email", "annlee@googlemail.com")
    assert match_key("email", "ann.lee@acme.com") != match_key("email", "annlee@acme.com")
    assert normalise_email(" Ann.Lee@Example.COM ") == "ann.lee@example.com"
    for bad in ["not-an-email", "ann..lee@example.com", "ann@example"]:
        with pytest.raises(ValueError):
            normalise_email(bad)


def test_free_mail_domains_are_not_companies() -> None:
    for free in ["ann@gmail.com", "ann@yahoo.co.uk", "ann@outlook.com", "ann@gmx.de", "ann@icloud.com"]:
        assert business_domain(free) is None, free
    assert business_domain("ann@Acme-Corp.co.uk") == "acme-corp.co.uk"
    assert company_name("mail.acme-corp.co.uk") == "Acme-corp"


def test_search_text_is_read_as_an_address_when_it_is_one() -> None:
    assert search_keys("(020) 7946-0018", "GB") == [("phone", "+442079460018")]
    assert search_keys("ANN@Example.com", None) == [("email", "ann@example.com")]
    assert search_keys("Ann Lee", "GB") == []
