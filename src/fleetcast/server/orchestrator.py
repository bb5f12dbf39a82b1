"""Deployments and the batch queue.

A deployment has one *target* per client (its id is the agent's ``task_id``). Target states:

    queued ──(heartbeat, a place is free)──▶ running ──(result)──▶ done | failed | cancelled
       └──(cancel)──▶ cancelled                 └──(no report for task_timeout)──▶ failed

At most ``batch`` targets of a deployment are ``running`` at once; a place is taken when the task is
handed out (so never more than ``batch`` clients write at once) and freed by the result. An idle
agent whose target is still ``running`` (it was killed and started again, or lost the task) gets
the task back: with ``resume_chunk`` = its last checkpoint (event ``client-resumed``) or from 0
when it had none (``client-restarted``). A deployment finishes when every target is done, failed or
cancelled. All changes happen under one lock (one server process per database).
"""

from __future__ import annotations

from fleetcast.server.agents import AgentsMixin
from fleetcast.server.clients import CLIENT_STATES, MAX_PAGE, ClientQuery, ClientsMixin
from fleetcast.server.deployments import DeploymentRequest, DeploymentsMixin, Plan
from fleetcast.server.enrollment import EnrollmentMixin, derive
from fleetcast.server.rowviews import (
    ACTIVE_DEPLOYMENT,
    ACTIVE_TARGET,
    TERMINAL_TARGET,
    client_view,
    deployment_kind,
    deployment_view,
    target_view,
)

__all__ = [
    "ACTIVE_DEPLOYMENT",
    "ACTIVE_TARGET",
    "CLIENT_STATES",
    "MAX_PAGE",
    "TERMINAL_TARGET",
    "ClientQuery",
    "DeploymentRequest",
    "Orchestrator",
    "Plan",
    "client_view",
    "deployment_kind",
    "deployment_view",
    "derive",
    "target_view",
]


class Orchestrator(DeploymentsMixin, ClientsMixin, EnrollmentMixin, AgentsMixin):
    """Deployments, clients and agents over one database and event bus. The parts live in
    server/deployments.py (admin side of deployments), server/clients.py (clients and audit),
    server/enrollment.py (enrollment, in batches), server/agents.py (heartbeat, progress,
    results) and server/core.py (the lock, the transaction and the batch queue's shared steps);
    this class only puts them together."""
