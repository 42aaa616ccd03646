"""A small wrapper over the generated hookpost stubs (``hookpost.v1``): the API
key on every call, page iteration, and the field violations of an
INVALID_ARGUMENT. The stubs themselves are generated from proto/ by
scripts/gen-clients and never edited by hand."""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import grpc
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from hookpost.v1 import webhook_service_pb2 as pb
from hookpost.v1 import webhook_service_pb2_grpc as pb_grpc

__all__ = ["Client", "field_violations", "pb"]


def _struct(value: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    if value is None:
        return None
    s = struct_pb2.Struct()
    s.update(value)
    return s


class Client:
    """hookpost over gRPC at ``address`` (``host:port``), acting with ``key``."""

    def __init__(self, address: str, key: str, channel: grpc.Channel | None = None) -> None:
        self._channel = channel or grpc.insecure_channel(address)
        self._stub = pb_grpc.WebhookServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {key}"),)

    def close(self) -> None:
        self._channel.close()

    def dispatch(
        self,
        *,
        webhook_url: str,
        webhook_type: str,
        payload: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> pb.DispatchResponse:
        request = pb.DispatchRequest(
            webhook_url=webhook_url,
            webhook_type=webhook_type,
            payload=_struct(payload),
            metadata=_struct(metadata),
            **fields,
        )
        return self._stub.Dispatch(request, metadata=self._metadata)

    def iter_logs(self, *, page_size: int = 50, **filters: Any) -> Iterator[pb.WebhookLog]:
        """Every log matching ``filters``, newest first, across pages."""
        token = ""
        while True:
            page = self._stub.ListWebhookLogs(
                pb.ListWebhookLogsRequest(page_size=page_size, page_token=token, **filters),
                metadata=self._metadata,
            )
            yield from page.logs
            token = page.next_page_token
            if not token:
                return

    def log_details(self, request_id: str, **scope: Any) -> pb.GetLogDetailsResponse:
        return self._stub.GetLogDetails(
            pb.GetLogDetailsRequest(request_id=request_id, **scope), metadata=self._metadata
        )

    @staticmethod
    def payload_of(log: pb.WebhookLog) -> dict[str, Any]:
        return json_format.MessageToDict(log.payload)


def field_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """The ``google.rpc.BadRequest`` field violations carried by an error, as
    (field, description) pairs; empty when it carries none."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return []
    out: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out.extend((v.field, v.description) for v in bad.field_violations)
    return out
