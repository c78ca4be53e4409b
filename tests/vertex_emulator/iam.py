"""Who may act as which service account (``iam.serviceAccounts.actAs``), as IAM decides it.

A custom job, a tuning job or a deployed model that names a service account runs as it, and the
CALLER of the create or deploy call (inside a pipeline: the pipeline's own service account)
must hold ``iam.serviceAccounts.actAs`` on that account, itself included
(roles/iam.serviceAccountUser). Every call to the emulator is made by ``caller``; tests grant
what their scenario's principals hold with ``grant_act_as``. ``test_permissions`` answers IAM's
``serviceAccounts.testIamPermissions`` for the caller.
"""

from __future__ import annotations

import threading
from collections import defaultdict

import grpc

from tests.vertex_emulator.resources import ApiError

ACT_AS = "iam.serviceAccounts.actAs"
DEFAULT_CALLER = "user:developer@example.com"


class Iam:
    def __init__(self, caller: str = DEFAULT_CALLER) -> None:
        self.caller = caller
        self._act_as: dict[str, set[str]] = defaultdict(set)
        self._lock = threading.Lock()

    def grant_act_as(self, service_account: str, member: str | None = None) -> None:
        """``member`` (default: the caller) gets roles/iam.serviceAccountUser on the account."""
        with self._lock:
            self._act_as[service_account].add(member or self.caller)

    def may_act_as(self, service_account: str) -> bool:
        with self._lock:
            return self.caller in self._act_as[service_account]

    def require_act_as(self, service_account: str) -> None:
        """PERMISSION_DENIED, worded as Vertex AI words it, unless the caller may act as it."""
        if service_account and not self.may_act_as(service_account):
            raise ApiError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"The caller {self.caller} does not have permission '{ACT_AS}' on service "
                f"account {service_account} (or it may not exist): grant it "
                "roles/iam.serviceAccountUser on that service account.",
            )

    def test_permissions(self, service_account: str, permissions: list[str]) -> list[str]:
        """The subset of ``permissions`` the caller holds on ``service_account``."""
        return [p for p in permissions if p == ACT_AS and self.may_act_as(service_account)]
