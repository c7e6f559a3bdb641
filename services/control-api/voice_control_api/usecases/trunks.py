"""SIP trunks per tenant (admins manage them; ingress reads them from KV ``trunks``).

Credentials are referenced by tenant secret name: each must exist when the trunk is saved, and a secret a trunk
uses cannot be deleted (usecases.tenant_secrets). A literal outbound proxy address must not be internal unless the
operator allow-listed it (EGRESS_ALLOW); names are checked again by ingress when it resolves them.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import asyncpg
from pydantic import ValidationError
from voice_runtime.egress import is_internal

from ..context import AppContext
from ..models_trunks import SipTrunkCreate, SipTrunkFields, SipTrunkOut, SipTrunkUpdate, split_host_port
from ..principal import Principal
from ..security import new_id
from ..store import trunks as store
from . import audit_log, dataplane
from .common import ExpectedVersion, Listing, Pagination, connection, fetch_page, found, transaction
from .errors import Conflict, InvalidField, InvalidFields
from .tenant_secrets import check_reference

_TAKEN = "the tenant already has a trunk with this name"
_SECRET_FIELDS = ("inbound_password_secret", "outbound_password_secret")


def _check_proxy(ctx: AppContext, proxy: str | None) -> None:
    if proxy is None:
        return
    host, port = split_host_port(proxy)
    try:
        internal = is_internal(ipaddress.ip_address(host))
    except ValueError:  # a name: ingress checks what it resolves to
        internal = host == "localhost" or host.endswith(".localhost")
    if internal and not ctx.egress.allows(host, port):
        raise InvalidField("outbound_proxy", "an internal address: an operator must allow-list it (EGRESS_ALLOW)")


async def _check(ctx: AppContext, conn: asyncpg.Connection, tenant_id: str, body: SipTrunkFields) -> dict[str, Any]:
    """The trunk's stored config, once its references hold (secrets exist, proxy not internal)."""
    _check_proxy(ctx, body.outbound_proxy)
    for field in _SECRET_FIELDS:
        name = getattr(body, field)
        if name is not None:
            await check_reference(conn, tenant_id, field, name)
    return body.model_dump(mode="json", exclude={"name"})


async def create_trunk(ctx: AppContext, principal: Principal, body: SipTrunkCreate) -> SipTrunkOut:
    trunk_id = new_id()
    async with transaction(ctx) as conn:
        config = await _check(ctx, conn, principal.tenant_id, body)
        try:
            row = await store.create(conn, trunk_id=trunk_id, tenant_id=principal.tenant_id, name=body.name,
                                     config=config)
        except asyncpg.UniqueViolationError:
            raise Conflict(_TAKEN) from None
        await audit_log.record(conn, principal, "sip_trunk.create", "sip_trunk", trunk_id)
    await dataplane.publish_trunk(ctx, row)
    return row


async def list_trunks(ctx: AppContext, principal: Principal, paging: Pagination) -> Listing[SipTrunkOut]:
    return await fetch_page(ctx, paging, store.list_, principal.tenant_id)


async def get_trunk(ctx: AppContext, principal: Principal, trunk_id: str) -> SipTrunkOut:
    async with connection(ctx) as conn:
        return found(await store.get(conn, principal.tenant_id, trunk_id), "SIP trunk")


async def update_trunk(
    ctx: AppContext, principal: Principal, trunk_id: str, body: SipTrunkUpdate, expected: ExpectedVersion
) -> SipTrunkOut:
    changes = body.model_dump(exclude_unset=True, exclude={"version"})
    async with transaction(ctx) as conn:
        current = found(await store.get(conn, principal.tenant_id, trunk_id, for_update=True), "SIP trunk")
        expected.check(current.version)
        merged = current.model_dump(mode="json", include=set(SipTrunkFields.model_fields)) | changes
        try:
            fields = SipTrunkFields.model_validate(merged)
        except ValidationError as e:
            raise InvalidFields(e) from None
        config = await _check(ctx, conn, principal.tenant_id, fields)
        try:
            row = await store.update(conn, principal.tenant_id, trunk_id, name=fields.name, config=config)
        except asyncpg.UniqueViolationError:
            raise Conflict(_TAKEN) from None
        await audit_log.record(conn, principal, "sip_trunk.update", "sip_trunk", trunk_id, fields=sorted(changes),
                               version=row.version)
    await dataplane.publish_trunk(ctx, row)
    return row


async def delete_trunk(ctx: AppContext, principal: Principal, trunk_id: str, expected: ExpectedVersion) -> None:
    async with transaction(ctx) as conn:
        current = found(await store.get(conn, principal.tenant_id, trunk_id, for_update=True), "SIP trunk")
        expected.check(current.version)
        await store.delete(conn, principal.tenant_id, trunk_id)
        await audit_log.record(conn, principal, "sip_trunk.delete", "sip_trunk", trunk_id)
    await dataplane.retract_trunk(ctx, trunk_id)
