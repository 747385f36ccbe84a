"""'My tasks' and the task notices through the aiohttp client, on SQLite and PostgreSQL: who sees what."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from aiohttp.test_utils import TestClient
from sqlalchemy import select

from crm_core.tasks import Task, create_task
from gateway.app import create_app
from parley.db import Database, utcnow
from parley.models import Role, User
from parley.settings import Settings
from routing.task_timers import TaskTimers
from tests.conftest import make_tenant
from tests.ui.composer_support import BrowserSession, web_session

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


async def _user(db: Database, tenant_id: int, email: str, role: Role = Role.AGENT) -> int:
    async with db.transaction() as session:
        user = User(tenant_id=tenant_id, email=email, password_hash="-", role=role)
        session.add(user)
        await session.flush()
        return user.id


async def _task(db: Database, tenant_id: int, title: str, assignee: int | None, **fields: Any) -> int:
    async with db.transaction() as session:
        task = await create_task(session, tenant_id, {"title": title, "assignee_id": assignee, **fields})
        assert task is not None
        return task.id


async def _get(client: TestClient[Any, Any], path: str, who: BrowserSession) -> tuple[int, str]:
    async with client.get(path, cookies=who.cookies, allow_redirects=False) as response:
        return response.status, await response.text()


async def _post(client: TestClient[Any, Any], path: str, who: BrowserSession) -> int:
    async with client.post(
        path, data={"csrf_token": who.csrf}, cookies=who.cookies, allow_redirects=False
    ) as response:
        return response.status


async def test_my_tasks_shows_only_mine_and_the_bell_names_task_notices(
    aiohttp_client: ClientFactory, db: Database, settings: Settings
) -> None:
    admin = await make_tenant(db, "acme")
    tenant = admin.tenant_id
    agent = await _user(db, tenant, "bob@acme.example.com")
    marketer = await _user(db, tenant, "mia@acme.example.com", Role.MARKETER)
    soon = utcnow() + timedelta(minutes=10)
    mine = await _task(db, tenant, "Call <i>Ann</i> back", agent, due_at=soon, remind_at=utcnow())
    admins = await _task(db, tenant, "The admin's", admin.user_id)
    other = await make_tenant(db, "globex")
    foreign = await _task(db, other.tenant_id, "Globex's", other.user_id)
    client = await aiohttp_client(create_app(settings))
    bob = await web_session(db, agent)

    status, text = await _get(client, "/tasks", bob)
    assert status == 200
    assert "Call &lt;i&gt;Ann&lt;/i&gt; back" in text and "The admin" not in text and "Globex" not in text
    status, count = await _get(client, "/ui/tasks/count", bob)
    assert status == 200 and ">1<" in count

    # The reminder fires, and the bell says what it is about and links to the tasks.
    assert await TaskTimers(db).sweep() == 1
    status, bell = await _get(client, "/ui/notifications", bob)
    assert status == 200 and "task due soon:" in bell and 'href="/tasks"' in bell
    assert "Call &lt;i&gt;Ann&lt;/i&gt; back" in bell

    # Someone else's task is not the agent's to complete; another tenant's does not exist.
    assert await _post(client, f"/tasks/{admins}/complete", bob) == 403
    assert await _post(client, f"/tasks/{foreign}/complete", bob) == 404
    assert await _post(client, f"/tasks/{mine}/complete", bob) == 303
    async with db.sessionmaker() as session:
        statuses = dict((await session.execute(select(Task.id, Task.status))).all())
    assert (statuses[mine], statuses[admins], statuses[foreign]) == ("done", "open", "open")
    _, count = await _get(client, "/ui/tasks/count", bob)
    assert ">1<" not in count

    # Marketers have no tasks page.
    status, _ = await _get(client, "/tasks", await web_session(db, marketer))
    assert status == 403
