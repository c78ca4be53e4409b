"""Long-running operations that finish later, as ``google.longrunning.Operations`` serves them.

A long-running call answers at once with an operation that is not done; its work runs in a
thread after ``delay_s`` and the operation ends with the response, or with an error status when
the work raises ApiError. The SDK polls GetOperation until then. Faults: ``hold`` (the next
operations of a method never finish) and ``fail`` (they end in an error).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import grpc
from google.cloud.aiplatform_v1.types import operation as operation_types
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, empty_pb2, timestamp_pb2
from google.rpc import status_pb2

from tests.vertex_emulator.resources import ApiError, Names, not_found, page

Work = Callable[[], Any]


def pack(message: Any) -> any_pb2.Any:
    """A proto-plus or protobuf message in an ``Any``."""
    payload = any_pb2.Any()
    payload.Pack(message if hasattr(message, "SerializeToString") else type(message).pb(message))
    return payload


class Operations:
    """The operations of one emulator: started by the services, read by GetOperation."""

    def __init__(self, delay_s: float, names: Names) -> None:
        self.delay_s = delay_s
        self.names = names
        self._operations: dict[str, operations_pb2.Operation] = {}
        self._finished = threading.Condition()
        self._ids = itertools.count(5_000_000_000_000_000_001)
        self._held: dict[str, int] = defaultdict(int)
        self._errors: dict[str, list[ApiError]] = defaultdict(list)

    def hold(self, method: str, count: int = 1) -> None:
        """The next ``count`` operations of ``method`` never finish."""
        self._held[method] += count

    def fail(self, method: str, code: grpc.StatusCode, message: str) -> None:
        """The next operation of ``method`` ends with this error, its work never done."""
        self._errors[method].append(ApiError(code, message))

    def start(self, method: str, resource: str, metadata_type: type, work: Work) -> Any:
        """An operation on ``resource`` that runs ``work`` later; returns it, not done."""
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        generic = operation_types.GenericOperationMetadata(create_time=now, update_time=now)
        operation = operations_pb2.Operation(
            name=f"{resource}/operations/{next(self._ids)}",
            metadata=pack(metadata_type(generic_metadata=generic)),
        )
        with self._finished:
            self._operations[operation.name] = operation
            if self._held[method]:
                self._held[method] -= 1
                return _copy(operation)
            if self._errors[method]:
                error = self._errors[method].pop(0)
                work = _raiser(error)
        threading.Thread(
            target=self._run, args=(operation.name, work), name=f"op-{method}", daemon=True
        ).start()
        return _copy(operation)

    def _run(self, name: str, work: Work) -> None:
        time.sleep(self.delay_s)
        done = operations_pb2.Operation()
        try:
            result = work()
            done.response.CopyFrom(pack(result if result is not None else empty_pb2.Empty()))
        except ApiError as error:
            done.error.CopyFrom(status_pb2.Status(code=error.code.value[0], message=error.message))
        except Exception as error:  # a bug of the emulator: say so, as INTERNAL
            done.error.CopyFrom(
                status_pb2.Status(
                    code=grpc.StatusCode.INTERNAL.value[0], message=f"emulator error: {error!r}"
                )
            )
        with self._finished:
            operation = self._operations.get(name)
            if operation is None or operation.done:  # deleted or cancelled meanwhile
                return
            operation.done = True
            if done.HasField("error"):
                operation.error.CopyFrom(done.error)
            else:
                operation.response.CopyFrom(done.response)
            self._finished.notify_all()

    def get(self, request: operations_pb2.GetOperationRequest) -> operations_pb2.Operation:
        with self._finished:
            if request.name not in self._operations:
                raise not_found(request.name)
            return _copy(self._operations[request.name])

    def wait(self, request: operations_pb2.WaitOperationRequest) -> operations_pb2.Operation:
        """Block until the operation is done or the request's timeout (default 60 s) passes."""
        timeout = request.timeout.ToTimedelta().total_seconds() or 60.0
        with self._finished:
            if request.name not in self._operations:
                raise not_found(request.name)
            self._finished.wait_for(lambda: self._operations[request.name].done, timeout)
            return _copy(self._operations[request.name])

    def list(self, request: operations_pb2.ListOperationsRequest) -> Any:
        """The operations of one resource (``.../models/M``: ``.../models/M/operations/*``),
        not of everything under its name: a location's list holds no model's operations."""
        parent = self.names.canonical(request.name).rstrip("/").removesuffix("/operations")
        with self._finished:
            found = [
                _copy(op)
                for name, op in self._operations.items()
                if name.rpartition("/operations/")[0] == parent
            ]
        operations, token = page(found, request.page_size, request.page_token)
        return operations_pb2.ListOperationsResponse(operations=operations, next_page_token=token)

    def cancel(self, request: operations_pb2.CancelOperationRequest) -> empty_pb2.Empty:
        with self._finished:
            operation = self._operations.get(request.name)
            if operation is None:
                raise not_found(request.name)
            if not operation.done:
                operation.done = True
                operation.error.CopyFrom(
                    status_pb2.Status(code=grpc.StatusCode.CANCELLED.value[0], message="Cancelled")
                )
                self._finished.notify_all()
        return empty_pb2.Empty()

    def delete(self, request: operations_pb2.DeleteOperationRequest) -> empty_pb2.Empty:
        with self._finished:
            if self._operations.pop(request.name, None) is None:
                raise not_found(request.name)
        return empty_pb2.Empty()

    def pending(self) -> list[str]:
        """Names of the operations not done yet."""
        with self._finished:
            return [name for name, op in self._operations.items() if not op.done]


def _copy(operation: operations_pb2.Operation) -> operations_pb2.Operation:
    copied = operations_pb2.Operation()
    copied.CopyFrom(operation)
    return copied


def _raiser(error: ApiError) -> Work:
    def work() -> Any:
        raise error

    return work
