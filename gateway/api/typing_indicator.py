"""`/conversations/{id}/typing`: the agent's typing indicator, shown to the customer where the channel can."""

from __future__ import annotations

from pydantic import Field
from sqlalchemy import select

from channels.webchat import WebChat, visitor_topic
from crm_core.models import ChannelIdentity
from gateway.api.permissions import Permission
from gateway.api.routing import ApiRequest, RouteTable
from gateway.api.schemas import RequestBody
from gateway.errors import ApiError, NotFound
from gateway.keys import HUB
from inbox.models import Conversation, Inbox
from parley.realtime import HubUnavailable

routes = RouteTable("conversations")


class TypingUpdate(RequestBody):
    typing: bool = Field(description="True while the agent types; false when they stop or send.")


@routes.post("/conversations/{conversation_id}/typing", allow=Permission.SEND_MESSAGES, errors=[422, 503])
async def set_typing(call: ApiRequest, *, conversation_id: int, body: TypingUpdate) -> None:
    """Show or hide the agent's typing indicator to the customer.

    Web chat only (422 `typing_unsupported` elsewhere); nothing is stored, and a visitor who is not
    connected simply does not see it.
    """
    found = (
        await call.session.execute(
            select(Inbox.channel, ChannelIdentity.address)
            .select_from(Conversation)
            .join(Inbox, Inbox.id == Conversation.inbox_id)
            .join(ChannelIdentity, ChannelIdentity.id == Conversation.identity_id)
            .where(Conversation.id == conversation_id, Conversation.tenant_id == call.tenant_id)
        )
    ).one_or_none()
    if found is None:
        raise NotFound("conversation")
    channel, address = found
    if channel != WebChat.name:
        raise ApiError(422, "typing_unsupported", f"{channel} conversations show no typing indicator.")
    try:
        await call.app[HUB].publish(visitor_topic(address), {"type": "typing", "typing": body.typing})
    except HubUnavailable as e:
        raise ApiError(503, "realtime_unavailable", f"The typing indicator could not be sent: {e}") from e
