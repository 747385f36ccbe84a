"""WhatsApp through Twilio's Messages API: the SMS adapter with `whatsapp:` addresses and richer content.

Twilio carries WhatsApp over the same Messages resource, webhooks and signatures as SMS, so this
channel is `TwilioSms` with its own parsers (profile name, locations, quick-reply answers), its own
error reasons, and Content API templates for messages outside WhatsApp's 24-hour window.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from multidict import MultiMapping
from twilio.base.exceptions import TwilioRestException, TwilioServiceException

from channels.base import (
    Address,
    ButtonReply,
    Capabilities,
    ChannelError,
    DeliveryStatus,
    InboundMessage,
    Location,
    MalformedPayload,
    OutboundMessage,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from channels.twilio_sms import (
    Parser,
    TwilioSms,
    delivery_status,
    leftovers,
    media_attachments,
    message_sid,
    normalise_phone,
)

PREFIX = "whatsapp:"

# Templates go through Twilio's Content API: a template is named by its Content SID.
_CONTENT_SID = re.compile(r"HX[0-9a-fA-F]{32}")

_RATE_LIMITED = "63018"
_OUTSIDE_WINDOW = "63016"

_ERROR_MESSAGES: Mapping[str, str] = {
    "63001": "Twilio could not authenticate with WhatsApp for this sender; check it in the Twilio console",
    "63003": "The recipient's number is not on WhatsApp",
    "63005": "WhatsApp did not accept the message content",
    "63007": "The WhatsApp sender (From) is not set up on this Twilio account",
    "63013": "WhatsApp refused the message for violating its policy",
    "63015": "The WhatsApp Sandbox only messages numbers that have joined it",
    _OUTSIDE_WINDOW: "The customer has not written in 24 hours; send a template: WhatsApp delivers "
    "free-form messages only within 24 hours of the customer's last message",
    _RATE_LIMITED: "WhatsApp's rate limit for this sender was exceeded; try again later",
    "63019": "WhatsApp could not download the attached media",
    "63024": "The recipient's number cannot receive WhatsApp messages",
    "63027": "The template does not exist in this language",
    "63028": "The template variables do not match the template's placeholders",
    "63032": "WhatsApp does not deliver marketing templates to this user's number for now (a Meta "
    "experiment); reach them on another channel, or reply once they write",
    "63049": "Meta chose not to deliver this marketing template to this user",
}


class TwilioWhatsApp(TwilioSms):
    """WhatsApp Business messages through a Twilio WhatsApp sender or a Messaging Service."""

    name = "twilio_whatsapp"
    # The customer's WhatsApp number, E.164 as on SMS: the same person on both is one contact.
    identity_kind = "phone"
    consent_channel = "whatsapp"
    # Free-form interactive buttons need a Content API template per message; the gateway shows
    # them as a numbered list instead.
    capabilities = Capabilities(
        media=True,
        buttons=False,
        max_text_length=1600,
        templates=True,
        reply_window=timedelta(hours=24),
    )

    @classmethod
    def validate_config(
        cls, settings: Mapping[str, Any], secrets: Mapping[str, str]
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """As for SMS; `phone_number` is the WhatsApp sender, with or without `whatsapp:` (stored without)."""
        phone_number = settings.get("phone_number")
        if isinstance(phone_number, str):
            settings = {**settings, "phone_number": _without_prefix(phone_number)}
        return super().validate_config(settings, secrets)

    @classmethod
    def template_name_problem(cls, name: str) -> str | None:
        """Twilio names a template by its Content SID."""
        if not _CONTENT_SID.fullmatch(name):
            return "a Twilio template is named by its Content SID: HX and 32 hex digits"
        return None

    def _parsers(self) -> Mapping[str, Parser]:
        return _PARSERS

    def _message_params(self, message: OutboundMessage) -> dict[str, Any]:
        params = super()._message_params(message)
        params["to"] = PREFIX + _without_prefix(message.recipient.value)
        if "from_" in params:
            params["from_"] = PREFIX + params["from_"]
        template = message.template
        if template is not None:
            if not _CONTENT_SID.fullmatch(template.name):
                raise PermanentDeliveryError(
                    f"Template {template.name!r} is not a Twilio Content SID (HX and 32 hex digits)",
                    code="invalid_template",
                )
            # The Content template is the whole message; its language is part of the Content SID.
            params.pop("body", None)
            params.pop("media_url", None)
            params["content_sid"] = template.name
            if template.variables:
                params["content_variables"] = json.dumps(dict(template.variables))
        return params

    def _delivery_error(
        self, e: TwilioRestException | TwilioServiceException, headers: Mapping[str, str] | None
    ) -> ChannelError:
        error = super()._delivery_error(e, headers)
        code = str(e.code) if e.code is not None else ""
        known = _ERROR_MESSAGES.get(code)
        if not isinstance(error, PermanentDeliveryError) or known is None:
            return error
        reason = f"{known} (Twilio: {error})"
        if code == _RATE_LIMITED:
            return TransientDeliveryError(reason)
        return PermanentDeliveryError(reason, code=code)


def _parse_message(form: MultiMapping[str], default_region: str) -> InboundMessage:
    sender = _without_prefix(form.get("From", ""))
    if not sender:
        raise MalformedPayload("Twilio WhatsApp message without From")
    sid = message_sid(form)
    consumed = {"From", "To", "Body", "MessageSid", "SmsMessageSid", "SmsSid", "NumMedia", "ProfileName"}
    attachments = media_attachments(form, consumed)
    location = _location(form, consumed)
    button_reply = _button_reply(form, consumed)

    text = form.get("Body", "")
    if not text and location is not None:
        text = location.describe()
    elif not text and button_reply is not None:
        text = button_reply.title
    recipient = _without_prefix(form.get("To", ""))
    return InboundMessage(
        provider_message_id=sid,
        sender=Address("phone", normalise_phone(sender, default_region) or sender),
        recipient=Address("phone", normalise_phone(recipient, default_region) or recipient)
        if recipient
        else None,
        text=text,
        attachments=attachments,
        sender_name=form.get("ProfileName", "").strip() or None,
        # No consent_change: STOP/START are carrier keywords of SMS, and neither WhatsApp nor
        # Twilio gives them a meaning here. A WhatsApp user opts out by blocking the business,
        # which no webhook reports (sends then fail), so a "stop" is just text for an agent or a bot.
        location=location,
        button_reply=button_reply,
        extra=leftovers(form, consumed),
    )


def _parse_status(form: MultiMapping[str], default_region: str) -> DeliveryStatus:
    return delivery_status(form, _ERROR_MESSAGES)


_PARSERS: Mapping[str, Parser] = {
    "": _parse_message,
    "status": _parse_status,
}


def _location(form: MultiMapping[str], consumed: set[str]) -> Location | None:
    """A shared location: `Latitude` and `Longitude`, with the place's `Label` and `Address` if given."""
    latitude, longitude = form.get("Latitude"), form.get("Longitude")
    if not latitude and not longitude:
        return None
    consumed.update(("Latitude", "Longitude", "Label", "Address"))
    return Location(
        latitude=_coordinate("Latitude", latitude, 90),
        longitude=_coordinate("Longitude", longitude, 180),
        name=form.get("Label", "").strip() or None,
        address=form.get("Address", "").strip() or None,
    )


def _coordinate(key: str, value: str | None, limit: float) -> float:
    if not value:
        raise MalformedPayload(f"location without {key}")
    try:
        number = float(value)
    except ValueError:
        raise MalformedPayload(f"{key} is not a number: {value!r}") from None
    if not math.isfinite(number) or abs(number) > limit:
        raise MalformedPayload(f"{key} is out of range: {value!r}")
    return number


def _button_reply(form: MultiMapping[str], consumed: set[str]) -> ButtonReply | None:
    """A quick-reply button pressed in a template: `ButtonPayload` is the id the template gave it."""
    payload = form.get("ButtonPayload", "").strip()
    title = form.get("ButtonText", "").strip()
    if not payload and not title:
        return None
    consumed.update(("ButtonPayload", "ButtonText"))
    title = title or form.get("Body", "").strip() or payload
    return ButtonReply(id=payload or title, title=title)


def _without_prefix(address: str) -> str:
    """`whatsapp:+14155550100` as `+14155550100`."""
    address = address.strip()
    if address[: len(PREFIX)].lower() == PREFIX:
        address = address[len(PREFIX) :].strip()
    return address
