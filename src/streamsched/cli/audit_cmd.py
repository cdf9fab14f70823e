"""``streamsched audit TASK_ID``: a task's whole story from the scheduler's topics
(submission, decisions with their reasons and ids, shadow decisions, lifecycle, cancels
and their outcome, the verdict); ``streamsched audit --policy``: every policy change.

No configured broker, an unreachable broker, or a task with no submission on record: one
``error:`` line on stderr and exit code 2.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from streamsched.audit import Story, build_story, policy_changes, read_events
from streamsched.broker import client_config
from streamsched.schemas.decisions import PolicyChanged
from streamsched.schemas.topics import DECISIONS

from ._common import cli_errors, fail, stdout_console
from .live import require_bootstrap

__all__ = ["audit"]


def _story_table(story: Story) -> Table:
    title = f"task {story.task_id}: {story.verdict or 'not settled yet'}"
    table = Table(title=title, title_justify="left")
    for header in ("time (UTC)", "what", "attempt", "who", "decision", "why"):
        table.add_column(header, overflow="fold")
    for e in story.entries:
        cells = (
            e.at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
            e.what,
            "" if e.attempt is None else str(e.attempt),
            e.who,
            e.decision_id or "",
            e.why,
        )
        table.add_row(*map(escape, cells))  # reasons are data, never rich markup
    return table


def _policy_table(changes: list[PolicyChanged]) -> Table:
    table = Table(title="policy changes", title_justify="left")
    for header in ("time (UTC)", "outcome", "policy", "requested by", "request", "why"):
        table.add_column(header, overflow="fold")
    for c in changes:
        outcome = "refused" if not c.accepted else "applied" if c.changed else "no change"
        cells = (
            c.occurred_at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
            outcome,
            c.version or c.policy,
            c.requested_by,
            c.request_event_id,
            c.reason,
        )
        table.add_row(*map(escape, cells))
    return table


def audit(
    task_id: Annotated[
        str | None, typer.Argument(help="The task whose story to tell.", show_default=False)
    ] = None,
    policy: Annotated[
        bool, typer.Option("--policy", help="List the policy changes instead of a task.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of a table.")
    ] = False,
    timeout_s: Annotated[
        float, typer.Option("--timeout-s", help="Give up reading the topics after this long.")
    ] = 30.0,
) -> None:
    """Tell a task's whole story from the scheduler's topics, in time order: submitted (by
    whom, what), rejected, each decision with its reason, decision id and predicted
    runtime, shadow decisions (marked), started, progress, preempted (by which decision),
    lost, failed, re-queued (and why), cancel requests (by whom) and their outcome,
    refused status queries, and the verdict. Needs KAFKA_BOOTSTRAP_SERVERS."""
    if policy == (task_id is not None):
        fail("give a TASK_ID, or --policy to list the policy changes (not both)")
    if not timeout_s > 0:
        fail(f"--timeout-s must be positive, got {timeout_s}")
    servers, settings = require_bootstrap("audit")
    config = client_config(servers, settings)
    console = stdout_console()
    if task_id is None:
        with cli_errors():
            changes = policy_changes(read_events(config, (DECISIONS,), timeout_s=timeout_s))
        if json_out:
            typer.echo(json.dumps([c.model_dump(mode="json") for c in changes], indent=2))
        else:
            console.print(_policy_table(changes))
        return
    with cli_errors():
        story = build_story(task_id, read_events(config, timeout_s=timeout_s))
    if json_out:
        typer.echo(json.dumps(story.to_dict(), indent=2))
    else:
        console.print(_story_table(story))
