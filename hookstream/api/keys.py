"""Typed keys for what the application holds (aiohttp ``AppKey``; plain strings would warn)."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from hookstream.core.secretbox import SecretBox
from hookstream.core.settings import Settings

POOL = web.AppKey("pool", asyncpg.Pool)
# The delivery-log reads' pool: DATABASE_READ_URL's (a replica) when it is set, else POOL itself.
READ_POOL = web.AppKey("read_pool", asyncpg.Pool)
SETTINGS = web.AppKey("settings", Settings)
SECRET_BOX = web.AppKey("secret_box", SecretBox)
