"""Whatever a signed webhook carries, the Twilio and WhatsApp Cloud parsers answer with events or a 400.

Fixtures from the providers' documentation with one field replaced, removed or added at random:
`parse` must return events that can be stored (JSON-serialisable extras, text everywhere) or raise
`MalformedPayload`, never anything else, since anything else would be a 500 and a provider retrying
it forever. (Telegram and Slack have the same test beside their adapters.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import MultiDict, MultiDictProxy

from channels.base import Channel, DeliveryStatus, InboundMessage, MalformedPayload, WebhookRequest
from channels.twilio_sms import TwilioSms
from channels.twilio_voice import TwilioVoice
from channels.twilio_whatsapp import TwilioWhatsApp
from channels.whatsapp_cloud import WhatsAppCloud
from tests.fakes.twilio_api import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, FIXTURES, load_fixture

HOOK_URL = "https://parley.example.com/webhooks/7"
TWILIO_SECRETS = {"auth_token": DEFAULT_AUTH_TOKEN}
CLOUD_PHONE_NUMBER_ID = "106540352242922"

TWILIO: dict[str, Callable[[], Channel]] = {
    "twilio_sms": lambda: TwilioSms.from_settings(
        {"account_sid": DEFAULT_ACCOUNT_SID, "phone_number": "+15017122661"}, TWILIO_SECRETS
    ),
    "twilio_whatsapp": lambda: TwilioWhatsApp.from_settings(
        {"account_sid": DEFAULT_ACCOUNT_SID, "phone_number": "+14155238886"}, TWILIO_SECRETS
    ),
    "twilio_voice": lambda: TwilioVoice.from_settings({"account_sid": DEFAULT_ACCOUNT_SID}, TWILIO_SECRETS),
}
TWILIO_FIXTURES = sorted(
    (channel, path.stem)
    for channel in TWILIO
    for path in (FIXTURES / channel).glob("*.txt")
    if not path.stem.startswith("malformed__")
)
# What a form value can be once anybody may write it: empty, huge, numbers, control characters.
FORM_VALUES = st.text(max_size=40) | st.sampled_from(["", "0", "-1", "99999999999", "NaN", "1e400", "\x00"])


def _twilio_route(channel: str, fixture: str) -> str:
    event = fixture.split("__", 1)[0]
    if channel == "twilio_voice":
        return "" if event == "incoming" else event
    return "status" if event == "status" else ""


def _check(adapter: Channel, request: WebhookRequest) -> None:
    try:
        events = adapter.parse(request)
    except MalformedPayload as e:
        assert str(e)  # a 400 says why
        return
    for event in events:
        assert isinstance(event, InboundMessage | DeliveryStatus)
        json.dumps(dict(event.extra))
        if isinstance(event, InboundMessage):
            assert isinstance(event.text, str) and event.provider_message_id
            assert all(a.url for a in event.attachments)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(TWILIO_FIXTURES), data=st.data())
def test_a_twilio_form_with_any_field_changed_parses_or_is_malformed(
    case: tuple[str, str], data: st.DataObject
) -> None:
    channel, fixture = case
    form = MultiDict(load_fixture(fixture, channel))
    action = data.draw(st.sampled_from(["replace", "remove", "add"]))
    key = data.draw(st.sampled_from(sorted(form)))
    if action == "replace":
        form[key] = data.draw(FORM_VALUES)
    elif action == "remove":
        del form[key]
    else:
        extra = data.draw(
            st.sampled_from(["MediaUrl3", "MediaContentType0", "NumMedia", "ButtonPayload", "X"])
        )
        form.add(extra, data.draw(FORM_VALUES))
    route = _twilio_route(channel, fixture)
    request = WebhookRequest(
        method="POST",
        url=f"{HOOK_URL}/{route}" if route else HOOK_URL,
        route=route,
        headers={},
        body=b"",
        form=MultiDictProxy(form),
    )
    _check(TWILIO[channel](), request)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
CLOUD_FIXTURES = sorted(
    p.stem for p in (FIXTURES / "whatsapp_cloud").glob("*.json") if not p.stem.startswith("malformed__")
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        found += _paths(child, (*prefix, key))
    return found


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(CLOUD_FIXTURES), data=st.data())
def test_a_cloud_api_change_with_any_field_replaced_parses_or_is_malformed(
    name: str, data: st.DataObject
) -> None:
    payload = json.loads((FIXTURES / "whatsapp_cloud" / f"{name}.json").read_text())
    path = data.draw(st.sampled_from(_paths(payload)))
    node = payload
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = data.draw(JSON_VALUES)
    adapter = WhatsAppCloud.from_settings(
        {"phone_number_id": CLOUD_PHONE_NUMBER_ID},
        {"access_token": "EAAG-token", "app_secret": "a" * 32, "verify_token": "v"},
    )
    request = WebhookRequest(
        method="POST", url=HOOK_URL, route="", headers={}, body=json.dumps(payload).encode()
    )
    _check(adapter, request)
    adapter.other_recipients(request)  # never raises either
