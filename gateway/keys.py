"""Typed keys for what the application holds."""

from __future__ import annotations

from aiohttp import web

from gateway.notify import Notifier
from inbox.runtime import InboxDirectory
from parley.crypto import SecretBox
from parley.db import Database
from parley.mailer import Mailer
from parley.media import MediaStore
from parley.outbox import Dispatcher
from parley.realtime import Hub
from parley.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
DB = web.AppKey("db", Database)
DIRECTORY = web.AppKey("directory", InboxDirectory)
SECRET_BOX = web.AppKey("secret_box", SecretBox)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
NOTIFIER = web.AppKey("notifier", Notifier)
MEDIA = web.AppKey("media", MediaStore)
HUB = web.AppKey("hub", Hub)
MAILER = web.AppKey("mailer", Mailer)
