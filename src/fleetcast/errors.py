"""Every error fleetcast raises on purpose.

The tree (each subsystem translates foreign errors -- OSError, struct.error, zstd errors,
subprocess failures -- at its boundary with ``raise X(...) from exc``)::

    FleetcastError                 root; .hint is an optional "what to do about it"
    ├── UsageError                 bad arguments or settings (CLI exit 2)
    │   └── BodyTooLarge           a request body beyond its limit (HTTP 413)
    ├── NotFoundError              a named thing does not exist (CLI exit 3; HTTP 404)
    │   ├── ImageNotFound
    │   ├── ClientNotFound
    │   ├── ChunkNotFound          a pack the store does not have
    │   ├── DeploymentNotFound
    │   └── TaskNotFound
    ├── IntegrityError             data does not match its hash or checksum (CLI exit 4)
    │   ├── ChunkCorrupt
    │   └── PackMissing            a pack an image needs is not in the store (the image is damaged)
    ├── CommandError               an external command failed (stderr tail attached)
    ├── DiskError                  block devices, partition tables, target-disk rules
    │   └── FilesystemError        allocation maps, grow, unsupported/unsafe filesystems
    ├── StoreError                 the image store (chunks, manifests, publish, gc)
    │   └── ManifestError          a manifest or index that does not parse, validate or match its hash
    │                              (also an IntegrityError: CLI exit 4)
    ├── CaptureError
    ├── RestoreError
    ├── TransportError             HTTP / multicast chunk delivery
    ├── ServerError                orchestrator and API state (HTTP 409 unless below)
    │   ├── AuthError              no or a wrong credential (HTTP 401)
    │   ├── ForbiddenError         a credential not allowed to do this (HTTP 403)
    │   └── ConflictError          a state conflict (HTTP 409)
    ├── AgentError                 the client-side task runner
    └── IdentityError              personalizing a deployed system
        └── HiveError              a Windows registry hive that cannot be read or written safely

Subclasses that live beside the code that raises them (exit codes and statuses of their base unless
said): ``server.users.SignInError`` (AuthError) and its ``SlowDown`` (HTTP 429),
``server.capture_ingest.PackRejected`` (IntegrityError), ``agent.runner.Cancelled`` / ``Stopped``
(AgentError), ``disk.partitions.TableError`` (DiskError), ``transport.http.HttpStatusError`` and
``transport.multicast.FrameError`` (TransportError), ``netboot.roster.RosterError`` (UsageError),
``lab.netns.LabError`` and ``lab.deploy_demo.LabRunError`` (FleetcastError).

The CLI maps classes to exit codes in one place (``fleetcast.cli.main``); the API maps them to
JSON problem responses. Library code never exits.
"""

from __future__ import annotations


class FleetcastError(Exception):
    """Root of every deliberate fleetcast error. ``hint`` tells the technician what to do."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(FleetcastError):
    exit_code = 2


class BodyTooLarge(UsageError):
    """A request body beyond its route's limit (HTTP 413)."""

    http_status = 413


class NotFoundError(FleetcastError):
    exit_code = 3


class ImageNotFound(NotFoundError):
    pass


class ClientNotFound(NotFoundError):
    pass


class ChunkNotFound(NotFoundError):
    pass


class DeploymentNotFound(NotFoundError):
    pass


class TaskNotFound(NotFoundError):
    pass


class IntegrityError(FleetcastError):
    exit_code = 4


class ChunkCorrupt(IntegrityError):
    pass


class PackMissing(IntegrityError):
    """A pack an image names is not in the store."""


class CommandError(FleetcastError):
    """An external command failed. ``argv``, ``returncode`` and ``stderr`` describe it."""

    def __init__(
        self,
        message: str,
        *,
        argv: list[str] | None = None,
        returncode: int | None = None,
        stderr: str = "",
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.argv = argv or []
        self.returncode = returncode
        self.stderr = stderr


class DiskError(FleetcastError):
    pass


class FilesystemError(DiskError):
    pass


class StoreError(FleetcastError):
    pass


class ManifestError(StoreError, IntegrityError):
    """A damaged or edited image's metadata: a StoreError for the API (HTTP 503), exit 4 for the CLI."""


class CaptureError(FleetcastError):
    pass


class RestoreError(FleetcastError):
    pass


class TransportError(FleetcastError):
    pass


class ServerError(FleetcastError):
    pass


class AuthError(ServerError):
    """No or a wrong credential (HTTP 401)."""


class ForbiddenError(ServerError):
    """A credential that is not allowed to do this (HTTP 403)."""


class ConflictError(ServerError):
    """A state conflict (HTTP 409)."""


class AgentError(FleetcastError):
    pass


class IdentityError(FleetcastError):
    pass


class HiveError(IdentityError):
    pass
