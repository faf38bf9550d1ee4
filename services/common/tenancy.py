"""Who is calling: the gateway authenticates clients and passes their tenant to backends in metadata.

Backends trust this header because only the gateway can reach them (NetworkPolicy in deploy/k8s).
"""

from __future__ import annotations

import grpc

TENANT_METADATA_KEY = "x-lumiserve-tenant"
DEFAULT_TENANT = "default"


def caller_tenant(context: grpc.aio.ServicerContext) -> str:
    """The tenant the gateway set for this call, or DEFAULT_TENANT for direct (embedded) callers."""
    for key, value in context.invocation_metadata() or ():
        if key == TENANT_METADATA_KEY and value:
            return str(value)
    return DEFAULT_TENANT
