"""`/inboxes`: configured channel instances, with the webhook URLs to give the provider."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select

from channels.base import ConfigurationError
from channels.registry import channel_class
from gateway.api.pagination import fetch_page
from gateway.api.permissions import Permission
from gateway.api.routing import ApiRequest, RouteTable
from gateway.api.schemas import InboxCreate, InboxList, InboxOut, InboxUpdate, PageQuery, merge_patch
from gateway.errors import ApiError, NotFound
from gateway.keys import SECRET_BOX
from inbox.models import Inbox
from parley.outbox import emit

logger = logging.getLogger(__name__)

routes = RouteTable("inboxes")


def _validated(
    channel: str, settings: Mapping[str, Any], secrets: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    cls = channel_class(channel)
    # `templates` (the approved templates agents are offered) is checked apart from the
    # channel's own settings, which the adapter is built from.
    templates = settings.get("templates")
    try:
        cleaned, cleaned_secrets = cls.validate_config(
            {k: v for k, v in settings.items() if k != "templates"}, secrets
        )
        if templates is not None:
            cleaned["templates"] = cls.validate_templates(templates)
        return cleaned, cleaned_secrets
    except ConfigurationError as e:
        raise ApiError(422, "invalid_channel_config", f"Invalid {channel} configuration: {e}") from None


def _secret_names(call: ApiRequest, inbox: Inbox) -> list[str]:
    try:
        return sorted(call.app[SECRET_BOX].open(inbox.secrets_encrypted))
    except ValueError:
        # Listing inboxes must survive a changed secret key; the inbox then needs its secrets again.
        logger.warning("inbox %s: stored secrets cannot be decrypted", inbox.id)
        return []


def _inbox_out(call: ApiRequest, inbox: Inbox, secret_names: Iterable[str] | None = None) -> InboxOut:
    base = f"{call.public_url()}/webhooks/{inbox.id}"
    return InboxOut(
        id=inbox.id,
        name=inbox.name,
        channel=inbox.channel,
        settings=inbox.settings,
        secrets_set=sorted(secret_names) if secret_names is not None else _secret_names(call, inbox),
        webhook_url=base,
        status_callback_url=f"{base}/status",
        created_at=inbox.created_at,
        updated_at=inbox.updated_at,
    )


async def _get(call: ApiRequest, inbox_id: int) -> Inbox:
    inbox = (
        await call.session.execute(
            select(Inbox).where(Inbox.id == inbox_id, Inbox.tenant_id == call.tenant_id)
        )
    ).scalar_one_or_none()
    if inbox is None:
        raise NotFound("inbox")
    return inbox


@routes.get("/inboxes", allow=Permission.READ_INBOXES)
async def list_inboxes(call: ApiRequest, *, query: PageQuery) -> InboxList:
    """List inboxes, newest first."""
    rows, next_cursor = await fetch_page(
        call.session, select(Inbox).where(Inbox.tenant_id == call.tenant_id), Inbox.id, query
    )
    return InboxList(data=[_inbox_out(call, inbox) for inbox in rows], next_cursor=next_cursor)


@routes.post("/inboxes", allow=Permission.MANAGE_INBOXES)
async def create_inbox(call: ApiRequest, *, body: InboxCreate) -> InboxOut:
    """Create an inbox.

    The settings and secrets are checked by the channel (`invalid_channel_config` if unusable);
    secrets are stored encrypted and never returned. Give the provider the returned `webhook_url`
    and `status_callback_url`.
    """
    settings, secrets = _validated(body.channel, body.settings, body.secrets)
    inbox = Inbox(
        tenant_id=call.tenant_id,
        name=body.name,
        channel=body.channel,
        settings=settings,
        secrets_encrypted=call.app[SECRET_BOX].seal(secrets),
    )
    call.session.add(inbox)
    await call.session.flush()
    await emit(
        call.session, call.tenant_id, ("inbox.created", {"inbox_id": inbox.id, "channel": inbox.channel})
    )
    # A webhook that arrived before the inbox existed left "no such inbox" in the directory's cache.
    call.forget_inbox_after_commit(inbox.id)
    call.notify_after_commit()
    return _inbox_out(call, inbox, secrets)


@routes.get("/inboxes/{inbox_id}", allow=Permission.READ_INBOXES)
async def get_inbox(call: ApiRequest, *, inbox_id: int) -> InboxOut:
    """Get an inbox."""
    return _inbox_out(call, await _get(call, inbox_id))


@routes.patch("/inboxes/{inbox_id}", allow=Permission.MANAGE_INBOXES)
async def update_inbox(call: ApiRequest, *, inbox_id: int, body: InboxUpdate) -> InboxOut:
    """Change an inbox's name, settings or secrets.

    Settings and secrets are merged into the current ones (a key set to null is removed) and the
    result is checked by the channel again.
    """
    inbox = await _get(call, inbox_id)
    changed: list[str] = []
    if body.name is not None and body.name != inbox.name:
        inbox.name = body.name
        changed.append("name")
    secret_names: list[str] | None = None
    if body.settings is not None or body.secrets is not None:
        box = call.app[SECRET_BOX]
        try:
            current_secrets = box.open(inbox.secrets_encrypted)
        except ValueError:
            current_secrets = {}  # unreadable after a key change: the patch must supply them again
        settings, secrets = _validated(
            inbox.channel,
            merge_patch(inbox.settings, body.settings or {}),
            merge_patch(current_secrets, body.secrets or {}),
        )
        if settings != inbox.settings:
            inbox.settings = settings
            changed.append("settings")
        if secrets != current_secrets:
            inbox.secrets_encrypted = box.seal(secrets)
            changed.append("secrets")
        secret_names = list(secrets)
    if changed:
        await call.session.flush()
        await emit(
            call.session, call.tenant_id, ("inbox.updated", {"inbox_id": inbox.id, "changed": changed})
        )
        call.forget_inbox_after_commit(inbox.id)
        call.notify_after_commit()
    return _inbox_out(call, inbox, secret_names)


@routes.delete("/inboxes/{inbox_id}", allow=Permission.MANAGE_INBOXES)
async def delete_inbox(call: ApiRequest, *, inbox_id: int) -> None:
    """Delete an inbox with its conversations and messages; its webhooks answer 404 from then on."""
    inbox = await _get(call, inbox_id)
    await call.session.delete(inbox)
    await call.session.flush()
    await emit(call.session, call.tenant_id, ("inbox.deleted", {"inbox_id": inbox_id}))
    call.forget_inbox_after_commit(inbox_id)
    call.notify_after_commit()
