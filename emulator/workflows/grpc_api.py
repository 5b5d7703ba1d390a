"""gRPC front of the local engine: `google.cloud.workflows.executions.v1.Executions`.

The google-cloud-workflows client library ships only a gRPC transport for the Executions API, so
this is what `ExecutionsClient` talks to locally, over an insecure channel
(`functions.dispatch.executions.executions_client`): Create, Get, List (newest first, `state="…"` filter)
and Cancel.
"""

from __future__ import annotations

import json
from concurrent import futures
from typing import Any

import grpc
from google.cloud.workflows.executions_v1.types import executions as types

from emulator.workflows.executions import STATE_FILTER, ApiError, Execution, WorkflowsEngine
from emulator.workflows.rest_api import list_page

SERVICE = "google.cloud.workflows.executions.v1.Executions"
_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
          409: grpc.StatusCode.ALREADY_EXISTS, 413: grpc.StatusCode.INVALID_ARGUMENT}
_VIEWS = {0: "FULL", 1: "BASIC", 2: "FULL"}


def _message(execution: Execution, view: str = "FULL", *, created: bool = False) -> types.Execution:
    doc = execution.created if created else execution.to_json(view)
    return types.Execution.from_json(json.dumps(doc), ignore_unknown_fields=True)


def _abort(context: grpc.ServicerContext, exc: ApiError) -> Any:
    code = grpc.StatusCode.FAILED_PRECONDITION if exc.status == "FAILED_PRECONDITION" else \
        _CODES.get(exc.code, grpc.StatusCode.INTERNAL)
    context.abort(code, exc.message)


def handler(engine: WorkflowsEngine) -> grpc.GenericRpcHandler:
    def create(req: types.CreateExecutionRequest, context: grpc.ServicerContext) -> types.Execution:
        try:
            ex = engine.create_execution(req.parent, req.execution.argument, labels=dict(req.execution.labels),
                                         call_log_level=types.Execution.CallLogLevel(req.execution.call_log_level).name)
            return _message(ex, created=True)
        except ApiError as exc:
            return _abort(context, exc)

    def get(req: types.GetExecutionRequest, context: grpc.ServicerContext) -> types.Execution:
        try:
            return _message(engine.get(req.name), _VIEWS.get(int(req.view), "FULL"))
        except ApiError as exc:
            return _abort(context, exc)

    def cancel(req: types.CancelExecutionRequest, context: grpc.ServicerContext) -> types.Execution:
        try:
            return _message(engine.cancel(req.name))
        except ApiError as exc:
            return _abort(context, exc)

    def list_(req: types.ListExecutionsRequest, context: grpc.ServicerContext) -> types.ListExecutionsResponse:
        state = None
        if req.filter:
            m = STATE_FILTER.match(req.filter)
            if not m:
                return _abort(context, ApiError(400, "INVALID_ARGUMENT", 'the local engine filters on state="STATE" only'))
            state = m.group(1)
        found = engine.list(req.parent, state)
        page, token = list_page(found, req.page_size, req.page_token)
        view = "FULL" if int(req.view) == 2 else "BASIC"
        return types.ListExecutionsResponse(executions=[_message(e, view) for e in page], next_page_token=token)

    def rpc(fn: Any, req_type: Any, resp_type: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=req_type.deserialize,
                                                   response_serializer=resp_type.serialize)

    return grpc.method_handlers_generic_handler(SERVICE, {
        "CreateExecution": rpc(create, types.CreateExecutionRequest, types.Execution),
        "GetExecution": rpc(get, types.GetExecutionRequest, types.Execution),
        "CancelExecution": rpc(cancel, types.CancelExecutionRequest, types.Execution),
        "ListExecutions": rpc(list_, types.ListExecutionsRequest, types.ListExecutionsResponse),
    })


class GrpcServer:
    def __init__(self, engine: WorkflowsEngine, host: str = "127.0.0.1", port: int = 0) -> None:
        # No SO_REUSEPORT: a second engine on a taken port fails instead of sharing it.
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=[("grpc.so_reuseport", 0)])
        self.server.add_generic_rpc_handlers((handler(engine),))
        self.port = self.server.add_insecure_port(f"{host}:{port}")

    def start(self) -> GrpcServer:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(grace=1).wait(5)
