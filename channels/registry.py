"""The channels Parley knows, by name; an inbox's `channel` column is one of these keys."""

from __future__ import annotations

from channels.base import Channel
from channels.email.channel import Email
from channels.slack import Slack
from channels.telegram import Telegram
from channels.twilio_sms import TwilioSms
from channels.twilio_voice import TwilioVoice
from channels.twilio_whatsapp import TwilioWhatsApp
from channels.webchat import WebChat
from channels.whatsapp_cloud import WhatsAppCloud

CHANNELS: dict[str, type[Channel]] = {
    c.name: c
    for c in (TwilioSms, TwilioWhatsApp, Telegram, WhatsAppCloud, Slack, TwilioVoice, WebChat, Email)
}


def channel_class(name: str) -> type[Channel]:
    """The adapter class for a channel name; `KeyError` if Parley has none by that name."""
    return CHANNELS[name]
