"""Knowledge bases (admins create, fill and delete them; every role reads them) and their documents, uploaded as
multipart form data (one ``file`` field): text, Markdown, HTML or PDF, up to KNOWLEDGE_MAX_UPLOAD_BYTES."""

from __future__ import annotations

from fastapi import APIRouter, File, Response, UploadFile

from ..deps import AUTHED, Admin, Auth, Ctx, Paging, errors
from ..documents import UnreadableDocument, UnsupportedDocument
from ..models import Page
from ..models_knowledge import KnowledgeBase, KnowledgeBaseCreate, KnowledgeDocument
from ..problems import ApiError, FieldError
from ..rest import IdPath, set_etag
from ..usecases import knowledge
from ..usecases.common import Listing

router = APIRouter(prefix="/v1/knowledge-bases", tags=["knowledge"], responses=AUTHED)

UPLOAD_PATH = r"^/v1/knowledge-bases/[^/]+/documents/?$"  # the route whose body may exceed the API's 1 MiB
READ_CHUNK = 1024 * 1024


@router.post(
    "",
    status_code=201,
    response_model=KnowledgeBase,
    responses=errors(409),
    summary="Create a knowledge base",
    description="Empty; upload documents into it, then name it in an agent's `knowledge_base_ids`.",
)
async def create_base(body: KnowledgeBaseCreate, principal: Admin, ctx: Ctx, response: Response) -> KnowledgeBase:
    row = await knowledge.create_base(ctx, principal, body)
    response.headers["Location"] = f"/v1/knowledge-bases/{row.id}"
    set_etag(response, row.version)
    return row


@router.get("", response_model=Page[KnowledgeBase], summary="List knowledge bases")
async def list_bases(principal: Auth, ctx: Ctx, paging: Paging) -> Listing[KnowledgeBase]:
    return await knowledge.list_bases(ctx, principal, paging)


@router.get(
    "/{knowledge_base_id}", response_model=KnowledgeBase, responses=errors(404), summary="Get a knowledge base"
)
async def get_base(knowledge_base_id: IdPath, principal: Auth, ctx: Ctx, response: Response) -> KnowledgeBase:
    row = await knowledge.get_base(ctx, principal, knowledge_base_id)
    set_etag(response, row.version)
    return row


@router.delete(
    "/{knowledge_base_id}",
    status_code=204,
    responses=errors(404, 409),
    summary="Delete a knowledge base with its documents",
    description="Refused (409) while an agent's current version retrieves from it.",
)
async def delete_base(knowledge_base_id: IdPath, principal: Admin, ctx: Ctx) -> Response:
    await knowledge.delete_base(ctx, principal, knowledge_base_id)
    return Response(status_code=204)


async def _read(file: UploadFile, cap: int) -> bytes:
    """The upload's bytes; 413 past ``cap`` (counted as read: a declared size is only the client's claim)."""
    data = bytearray()
    while chunk := await file.read(READ_CHUNK):
        data += chunk
        if len(data) > cap:
            raise ApiError(413, f"the document is over {cap} bytes (KNOWLEDGE_MAX_UPLOAD_BYTES)")
    return bytes(data)


@router.post(
    "/{knowledge_base_id}/documents",
    status_code=201,
    response_model=KnowledgeDocument,
    responses={
        **errors(404, 503),
        413: {"description": "The document is over KNOWLEDGE_MAX_UPLOAD_BYTES"},
        415: {"description": "Not text, Markdown, HTML or PDF"},
    },
    summary="Upload a document (text, Markdown, HTML or PDF)",
    description="Multipart form data with one `file` field. The format is taken from the file name's extension "
    "(.txt, .md, .html, .pdf), else from the part's content type. The text is chunked with overlap and indexed "
    "for full-text search (and embedded when the deployment has an embeddings endpoint). A file with no "
    "usable text (a scanned PDF, an encrypted or broken one, binary data) is a 422.",
)
async def add_document(
    knowledge_base_id: IdPath, principal: Admin, ctx: Ctx, response: Response, file: UploadFile = File(...)
) -> KnowledgeDocument:
    data = await _read(file, ctx.settings.knowledge_max_upload_bytes)
    upload = knowledge.Upload(file.filename or "document", file.content_type, data)
    try:
        row = await knowledge.add_document(ctx, principal, knowledge_base_id, upload)
    except UnsupportedDocument as e:
        raise ApiError(415, str(e), kind="unsupported-document") from None
    except UnreadableDocument as e:
        raise ApiError(
            422, str(e), kind="unreadable-document",
            errors=[FieldError(field="body.file", message=str(e), type="unreadable_document")],
        ) from None
    response.headers["Location"] = f"/v1/knowledge-bases/{knowledge_base_id}/documents/{row.id}"
    return row


@router.get(
    "/{knowledge_base_id}/documents",
    response_model=Page[KnowledgeDocument],
    responses=errors(404),
    summary="List a knowledge base's documents",
)
async def list_documents(
    knowledge_base_id: IdPath, principal: Auth, ctx: Ctx, paging: Paging
) -> Listing[KnowledgeDocument]:
    return await knowledge.list_documents(ctx, principal, knowledge_base_id, paging)


@router.delete(
    "/{knowledge_base_id}/documents/{document_id}",
    status_code=204,
    responses=errors(404),
    summary="Delete a document with its chunks",
)
async def delete_document(knowledge_base_id: IdPath, document_id: IdPath, principal: Admin, ctx: Ctx) -> Response:
    await knowledge.delete_document(ctx, principal, knowledge_base_id, document_id)
    return Response(status_code=204)
