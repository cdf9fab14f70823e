"""The processor's status view: what each request is answered, per requesting tenant.

:class:`StatusView` holds the decisions (plain methods over the :class:`~.app.Processor`'s
tables, testable without faust or Kafka); :func:`add_views` registers them as faust web
routes. A request names its tenant in the :data:`~..schemas.tenancy.HTTP_TENANT_HEADER`
header (``X-Streamsched-Tenant``): it then sees that tenant's tasks only, and a request
that reaches for another tenant's task is answered 403 with an
:class:`~..schemas.tenancy.AccessRefused` record to audit. Without the header the view is
in operator mode (every task), or answers 401 when ``require_tenant`` is set; tenants
listed as ``operators`` are answered like an operator.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from ..schemas.tenancy import (
    HTTP_TENANT_HEADER,
    AccessRefused,
    Action,
    access_refusal,
    check_tenant,
)
from . import state as st

if TYPE_CHECKING:
    from .app import Processor

logger = logging.getLogger(__name__)

#: Largest ``limit`` of ``GET /tasks``.
MAX_LIMIT: Final = 1000


@dataclass(frozen=True)
class Answer:
    """A status-view answer: HTTP status, JSON body, and the refusal to audit (if any)."""

    status: int
    body: Any
    refusal: AccessRefused | None = None


def _error(status: int, message: str, refusal: AccessRefused | None = None) -> Answer:
    return Answer(status, {"error": message}, refusal)


class StatusView:
    """The answers of the status view over ``proc``'s tables. ``require_tenant``: a
    request without the tenant header is refused (401) instead of served as operator;
    ``operators``: tenants whose requests are answered like an operator's (every task)."""

    def __init__(
        self, proc: Processor, require_tenant: bool = False, operators: Iterable[str] = ()
    ) -> None:
        self.proc = proc
        self.require_tenant = require_tenant
        self.operators = frozenset(operators)

    def requester(self, headers: Mapping[str, str]) -> str | Answer:
        """The tenant a request speaks for ("" in operator mode), or the error answer
        (400 malformed header, 401 none while :attr:`require_tenant`)."""
        raw = headers.get(HTTP_TENANT_HEADER)
        if raw is None or not raw.strip():
            if self.require_tenant:
                return _error(
                    401,
                    f"this status view requires the {HTTP_TENANT_HEADER} header naming your tenant",
                )
            return ""
        try:
            tenant = check_tenant(raw.strip(), f"header {HTTP_TENANT_HEADER}")
        except ValueError as exc:
            return _error(400, str(exc))
        return "" if tenant in self.operators else tenant

    def _refuse(
        self, requester: str, action: Action, owner: str, reason: str, task_id: str | None
    ) -> Answer:
        record = AccessRefused(
            occurred_at=datetime.now(UTC),
            source="processor/status-view",
            requested_by=requester,
            action=action,
            task_id=task_id,
            tenant=owner,
            reason=reason,
        )
        logger.warning(
            "refused %s of %s by tenant %s: %s", action, task_id or owner, requester, reason
        )
        return _error(403, reason, record)

    def answer_task(self, requester: str, task_id: str) -> Answer:
        """``GET /tasks/{task_id}`` for ``requester`` ("" = operator)."""
        status = self.proc.task(task_id)
        if status is None or (requester and status.tenant is None):
            return _error(404, f"task {task_id!r} is not known to the processor")
        reason = access_refusal(requester or None, status.tenant)
        if reason is not None:
            assert status.tenant is not None
            return self._refuse(
                requester, "query", status.tenant, f"task {task_id!r}: {reason}", task_id
            )
        return Answer(200, status.to_json())

    def answer_tasks(self, requester: str, query: Mapping[str, str]) -> Answer:
        """``GET /tasks?state=&tenant=&limit=`` for ``requester`` ("" = operator)."""
        state = query.get("state") or None
        if state is not None and state not in {s.value for s in st.TaskState}:
            known = ", ".join(s.value for s in st.TaskState)
            return _error(400, f"state={state!r}: expected one of {known}")
        raw_limit = query.get("limit") or "50"
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
            return _error(400, f"limit={raw_limit!r}: expected 1..{MAX_LIMIT}")
        tenant = query.get("tenant") or None
        if requester and tenant is not None and tenant != requester:
            reason = f"tenant {requester!r} may not list the tasks of tenant {tenant!r}"
            return self._refuse(requester, "list", tenant, reason, None)
        chosen = st.select(
            self.proc.all_tasks(requester or None),
            st.TaskState(state) if state else None,
            tenant,
            int(raw_limit),
        )
        return Answer(200, {"tasks": [t.to_json() for t in chosen]})

    def answer_predict(self, requester: str, query: Mapping[str, str]) -> Answer:
        """``GET /models/predict?task_id=&hardware=`` for ``requester``."""
        task_id = query.get("task_id") or ""
        hardware = query.get("hardware") or ""
        if not task_id or not hardware:
            return _error(400, "expected query parameters task_id and hardware")
        status = self.proc.task(task_id)
        owner = None if status is None else status.tenant
        reason = access_refusal(requester or None, owner)
        if reason is not None:
            assert owner is not None
            return self._refuse(requester, "predict", owner, f"task {task_id!r}: {reason}", task_id)
        answer = None if requester and owner is None else self.proc.predict(task_id, hardware)
        if answer is None:
            return _error(404, f"task {task_id!r}: not known, or its submission not seen")
        return Answer(200, answer)

    def answer_summary(self, requester: str) -> Answer:
        """``GET /summary`` for ``requester`` ("" = operator: every task)."""
        return Answer(200, self.proc.summary(requester or None))


def add_views(
    app: Any, status: StatusView, view: Any, audit: Callable[[AccessRefused], Awaitable[Any]]
) -> None:
    """Register the routes of the web view on the faust ``app`` (``view``: faust's View
    class); ``audit`` publishes an access refusal."""
    proc = status.proc

    def error(self: Any, status: int, message: str) -> Any:
        return self.json({"error": message}, status=status)

    async def respond(self: Any, request: Any, answer: Callable[[str], Answer]) -> Any:
        who = status.requester(request.headers)
        result = who if isinstance(who, Answer) else answer(who)
        if result.refusal is not None:
            try:
                await audit(result.refusal)
            except Exception as exc:  # the refusal stands even if its audit failed
                logger.error("access refusal not audited: %s", exc)
        return self.json(result.body, status=result.status)

    @app.page("/tasks/{task_id}")
    class TaskView(view):  # type: ignore[misc]
        async def get(self, request: Any, task_id: str) -> Any:
            return await respond(self, request, lambda who: status.answer_task(who, task_id))

    @app.page("/tasks")
    class TasksView(view):  # type: ignore[misc]
        async def get(self, request: Any) -> Any:
            return await respond(self, request, lambda who: status.answer_tasks(who, request.query))

    @app.page("/summary")
    class SummaryView(view):  # type: ignore[misc]
        async def get(self, request: Any) -> Any:
            return await respond(self, request, status.answer_summary)

    @app.page("/models")
    class ModelsView(view):  # type: ignore[misc]
        async def get(self, request: Any) -> Any:
            raw = request.query.get("ring") or ""
            if raw and not raw.isdigit():
                return error(self, 400, f"ring={raw!r}: expected a number of entries >= 0")
            return self.json(proc.hub.view(int(raw) if raw else None))

    @app.page("/models/predict")
    class PredictView(view):  # type: ignore[misc]
        async def get(self, request: Any) -> Any:
            return await respond(
                self, request, lambda who: status.answer_predict(who, request.query)
            )

    @app.page("/nodes")
    class NodesView(view):  # type: ignore[misc]
        async def get(self, request: Any) -> Any:
            return self.json({"nodes": list(proc.nodes.values())})

    @app.page("/datasets")
    class DatasetsView(view):  # type: ignore[misc]
        async def get(self, request: Any) -> Any:
            return self.json({"datasets": list(proc.datasets.values())})

    @app.page("/triggers")
    class TriggersView(view):  # type: ignore[misc]
        async def get(self, request: Any) -> Any:
            states = {r.name: proc._trigger_state(r).to_json() for r in proc.rules}
            return self.json({"triggers": states})
