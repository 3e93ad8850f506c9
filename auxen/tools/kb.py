"""Knowledge-base operations: knowledge bases, their documents, attaching them to
instances, and searching them.

The relational rows hold names, titles, ids, sizes and keyed hashes; document text goes
only to the chunk store (`auxen.kb`). Every lookup runs in a workspace-scoped session
and filters by the caller's mode, so another workspace's ids read as "no such".
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from nacl.encoding import RawEncoder
from nacl.hash import blake2b
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from auxen.auth.sealing import workspace_key
from auxen.kb.documents import extract_text, resolve_content_type
from auxen.runtime import Runtime
from auxen.store.models import (
    DocumentStatus,
    Instance,
    InstanceState,
    KbAttachment,
    KbDocument,
    KnowledgeBase,
)
from auxen.tools.context import Caller
from auxen.tools.errors import Conflict, InvalidArgument, NotFound, TooLarge
from auxen.tools.instances import get_instance
from auxen.tools.permissions import Permission
from auxen.tools.views import (
    AttachmentView,
    DocumentView,
    KnowledgeBaseView,
    Passage,
    _iso,
)

log = logging.getLogger(__name__)

MAX_TOP_K = 20
MAX_ATTACHED = 10  # knowledge bases one instance retrieves from
MAX_QUERY_CHARS = 4000


class CreateKnowledgeBaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="Unique in this workspace")


class DocumentInput(BaseModel):
    """A document given as JSON (MCP, REST): text, or base64 bytes for binary types."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=300)
    text: str | None = Field(default=None, min_length=1)
    content_base64: str | None = Field(default=None, min_length=1)
    content_type: str | None = Field(default=None, max_length=100)

    @model_validator(mode="after")
    def _one_content(self) -> DocumentInput:
        if (self.text is None) == (self.content_base64 is None):
            raise ValueError("give exactly one of text or content_base64 for each document")
        return self


class AddDocumentsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: list[DocumentInput] = Field(min_length=1)


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    top_k: int = Field(default=5, ge=1, le=MAX_TOP_K)


@dataclass(frozen=True)
class NewDocument:
    """One uploaded document before it is read: its bytes stay in memory only."""

    title: str
    content_type: str | None
    filename: str | None
    data: bytes


@dataclass(frozen=True)
class AddedDocument:
    document: DocumentView
    duplicate: bool  # the same bytes were already in this knowledge base


def documents_from_inputs(inputs: Sequence[DocumentInput]) -> list[NewDocument]:
    docs = []
    for i, doc in enumerate(inputs):
        if doc.text is not None:
            data = doc.text.encode()
        else:
            try:
                data = base64.b64decode(doc.content_base64 or "", validate=True)
            except (binascii.Error, ValueError):
                raise InvalidArgument(
                    "content_base64 is not valid base64", param=f"documents.{i}.content_base64"
                ) from None
        docs.append(NewDocument(doc.title, doc.content_type, None, data))
    return docs


# -- knowledge bases -------------------------------------------------------------------


async def _load_kb(rt: Runtime, caller: Caller, kb_id: str) -> KnowledgeBase:
    caller.require(Permission.KNOWLEDGE)
    async with caller.scoped(rt.db) as session:
        kb = await session.get(KnowledgeBase, kb_id)
    if kb is None or kb.livemode != caller.livemode:
        raise NotFound(f"no knowledge base {kb_id[:64]}", param="knowledge_base_id")
    return kb


async def _views(rt: Runtime, caller: Caller, kbs: list[KnowledgeBase]) -> list[KnowledgeBaseView]:
    ids = [kb.id for kb in kbs]
    async with caller.scoped(rt.db) as session:
        counts = {
            row[0]: (int(row[1]), int(row[2]))
            for row in (
                await session.exec(
                    select(
                        KbDocument.knowledge_base_id,
                        sa.func.count(),
                        sa.func.coalesce(sa.func.sum(KbDocument.chunk_count), 0),
                    )
                    .where(col(KbDocument.knowledge_base_id).in_(ids))
                    .group_by(col(KbDocument.knowledge_base_id))
                )
            ).all()
        }
    return [
        KnowledgeBaseView(
            id=kb.id,
            livemode=kb.livemode,
            name=kb.name,
            embedding_model=kb.embedding_model,
            chunk_tokens=kb.chunk_tokens,
            documents=counts.get(kb.id, (0, 0))[0],
            chunks=counts.get(kb.id, (0, 0))[1],
            created_at=_iso(kb.created_at),
        )
        for kb in kbs
    ]


async def create_knowledge_base(
    rt: Runtime, caller: Caller, req: CreateKnowledgeBaseRequest
) -> KnowledgeBaseView:
    caller.require(Permission.KNOWLEDGE)
    name = req.name.strip()
    if not name:
        raise InvalidArgument("name must not be blank", param="name")
    kb = KnowledgeBase(
        workspace_id=caller.workspace_id,
        livemode=caller.livemode,
        name=name,
        embedding_model=rt.kb.embedder.name,
        chunk_tokens=rt.settings.kb_chunk_tokens,
        chunk_overlap_tokens=rt.settings.kb_chunk_overlap_tokens,
    )
    try:
        async with caller.scoped(rt.db) as session:
            existing = (
                await session.exec(select(sa.func.count()).select_from(KnowledgeBase))
            ).one()
            if existing >= rt.settings.kb_max_knowledge_bases:
                raise TooLarge(
                    f"this workspace has {existing} knowledge bases, the most allowed; "
                    "delete one first",
                    param="name",
                )
            session.add(kb)
            await session.commit()
    except IntegrityError:
        raise Conflict(
            f"a knowledge base named {name[:100]!r} already exists; choose another name",
            param="name",
        ) from None
    return (await _views(rt, caller, [kb]))[0]


async def list_knowledge_bases(rt: Runtime, caller: Caller) -> list[KnowledgeBaseView]:
    caller.require(Permission.KNOWLEDGE)
    async with caller.scoped(rt.db) as session:
        kbs = (
            await session.exec(
                select(KnowledgeBase)
                .where(col(KnowledgeBase.livemode) == caller.livemode)
                .order_by(col(KnowledgeBase.created_at).desc())
            )
        ).all()
    return await _views(rt, caller, list(kbs))


async def get_knowledge_base(rt: Runtime, caller: Caller, kb_id: str) -> KnowledgeBaseView:
    return (await _views(rt, caller, [await _load_kb(rt, caller, kb_id)]))[0]


async def delete_knowledge_base(rt: Runtime, caller: Caller, kb_id: str) -> KnowledgeBaseView:
    """Drop the knowledge base's chunk table, then its documents and attachments."""
    kb = await _load_kb(rt, caller, kb_id)
    view = (await _views(rt, caller, [kb]))[0]
    await rt.kb.store.drop(caller.workspace_id, kb.id)
    async with caller.scoped(rt.db) as session:
        for table in (KbAttachment, KbDocument):
            await session.exec(sa.delete(table).where(col(table.knowledge_base_id) == kb.id))
        await session.exec(sa.delete(KnowledgeBase).where(col(KnowledgeBase.id) == kb.id))
        await session.commit()
    rt.kb.forget_attachments()
    return view


# -- documents ---------------------------------------------------------------------------


def _document_view(doc: KbDocument) -> DocumentView:
    return DocumentView(
        id=doc.id,
        knowledge_base_id=doc.knowledge_base_id,
        title=doc.title,
        content_type=doc.content_type,
        bytes=doc.byte_size,
        chunks=doc.chunk_count,
        status=doc.status.value,
        created_at=_iso(doc.created_at),
    )


def _content_hash(rt: Runtime, workspace_id: str, content_type: str, data: bytes) -> str:
    key = workspace_key(rt.settings.master_key_bytes, workspace_id)
    digest = blake2b(
        content_type.encode() + b"\0" + data,
        digest_size=32,
        key=key,
        person=b"auxen-kb-doc",
        encoder=RawEncoder,
    )
    return bytes(digest).hex()


@dataclass(frozen=True)
class _Read:
    title: str
    content_type: str
    size: int
    content_hash: str
    text: str


async def _read_all(rt: Runtime, caller: Caller, docs: Sequence[NewDocument]) -> list[_Read]:
    """Every document checked and read before anything is stored: one bad document in
    a request changes nothing."""
    limit = rt.settings.kb_max_document_bytes
    if not docs:
        raise InvalidArgument("give at least one document", param="documents")
    if len(docs) > rt.settings.kb_max_documents_per_request:
        raise TooLarge(
            f"{len(docs)} documents in one request; send at most "
            f"{rt.settings.kb_max_documents_per_request} at a time",
            param="documents",
        )
    out = []
    for i, doc in enumerate(docs):
        where = f"documents.{i}"
        title = doc.title.strip()
        if not 1 <= len(title) <= 300:
            raise InvalidArgument("title must be 1-300 characters", param=f"{where}.title")
        if len(doc.data) > limit:
            raise TooLarge(
                f"document {i} is {len(doc.data)} bytes; the limit is {limit}",
                param=f"{where}.content",
            )
        kind = resolve_content_type(doc.content_type, doc.filename, f"{where}.content_type")
        text = await asyncio.to_thread(extract_text, doc.data, kind, param=f"{where}.content")
        out.append(
            _Read(
                title,
                kind,
                len(doc.data),
                _content_hash(rt, caller.workspace_id, kind, doc.data),
                text,
            )
        )
    return out


async def add_documents(
    rt: Runtime, caller: Caller, kb_id: str, docs: Sequence[NewDocument]
) -> list[AddedDocument]:
    """Read, chunk, embed and store each document. A document whose bytes are already
    in the knowledge base is not added again: its existing row comes back, marked."""
    kb = await _load_kb(rt, caller, kb_id)
    read = await _read_all(rt, caller, docs)
    async with caller.scoped(rt.db) as session:
        held = (
            await session.exec(
                select(sa.func.count())
                .select_from(KbDocument)
                .where(col(KbDocument.knowledge_base_id) == kb.id)
            )
        ).one()
    new_hashes = {r.content_hash for r in read}
    if held + len(new_hashes) > rt.settings.kb_max_documents_per_kb:
        raise TooLarge(
            f"the knowledge base holds {held} documents and takes at most "
            f"{rt.settings.kb_max_documents_per_kb}; delete some or use another one",
            param="documents",
        )
    claimed: list[tuple[KbDocument, _Read]] = []
    results: list[AddedDocument | None] = []
    ws = caller.workspace_id
    ids: list[str] = []
    try:
        for doc in read:
            row, duplicate = await _claim(rt, caller, kb, doc)
            if duplicate:
                results.append(AddedDocument(_document_view(row), duplicate=True))
            else:
                _ingesting.add(row.id)  # a second copy in this request is a duplicate
                ids.append(row.id)
                results.append(None)
                claimed.append((row, doc))
        for row_id in ids:  # leftovers of a try cut short by a crash
            await rt.kb.store.delete_document(ws, kb.id, row_id)
        counts = await rt.kb.ingest_many(ws, kb.id, [(r.id, d.text) for r, d in claimed])
    except BaseException:
        for row_id in ids:
            await rt.kb.store.delete_document(ws, kb.id, row_id)
        async with caller.scoped(rt.db) as session:
            await session.exec(sa.delete(KbDocument).where(col(KbDocument.id).in_(ids)))
            await session.commit()
        raise
    finally:
        _ingesting.difference_update(ids)
    async with caller.scoped(rt.db) as session:
        for (row, _), chunks in zip(claimed, counts, strict=True):
            await session.exec(
                sa.update(KbDocument)
                .where(col(KbDocument.id) == row.id)
                .values(status=DocumentStatus.READY.value, chunk_count=chunks)
            )
            row.status, row.chunk_count = DocumentStatus.READY, chunks
        await session.commit()
    fresh = iter(AddedDocument(_document_view(row), duplicate=False) for row, _ in claimed)
    return [r if r is not None else next(fresh) for r in results]


async def _claim(
    rt: Runtime, caller: Caller, kb: KnowledgeBase, doc: _Read
) -> tuple[KbDocument, bool]:
    """The document's row, new (status ingesting) or, when these bytes are already in
    the knowledge base, the existing one (True). A row left `ingesting` by a crash is
    claimed again."""
    ws = caller.workspace_id
    async with caller.scoped(rt.db) as session:
        existing = (
            await session.exec(
                select(KbDocument)
                .where(col(KbDocument.knowledge_base_id) == kb.id)
                .where(col(KbDocument.content_hash) == doc.content_hash)
            )
        ).first()
        if existing is not None:
            duplicate = existing.status is DocumentStatus.READY or existing.id in _ingesting
            return existing, duplicate
        row = KbDocument(
            workspace_id=ws,
            knowledge_base_id=kb.id,
            title=doc.title,
            content_type=doc.content_type,
            content_hash=doc.content_hash,
            byte_size=doc.size,
            status=DocumentStatus.INGESTING,
        )
        session.add(row)
        try:
            await session.commit()
        except IntegrityError:  # the same bytes, uploaded concurrently
            await session.rollback()
            return await _claim(rt, caller, kb, doc)
    return row, False


# Documents being ingested by this process (a retry of the same bytes joins, not redoes).
_ingesting: set[str] = set()


async def list_documents(rt: Runtime, caller: Caller, kb_id: str) -> list[DocumentView]:
    kb = await _load_kb(rt, caller, kb_id)
    async with caller.scoped(rt.db) as session:
        docs = (
            await session.exec(
                select(KbDocument)
                .where(col(KbDocument.knowledge_base_id) == kb.id)
                .order_by(col(KbDocument.created_at))
            )
        ).all()
    return [_document_view(d) for d in docs]


async def delete_document(
    rt: Runtime, caller: Caller, kb_id: str, document_id: str
) -> DocumentView:
    kb = await _load_kb(rt, caller, kb_id)
    async with caller.scoped(rt.db) as session:
        doc = await session.get(KbDocument, document_id)
    if doc is None or doc.knowledge_base_id != kb.id:
        raise NotFound(
            f"no document {document_id[:64]} in knowledge base {kb.id}", param="document_id"
        )
    await rt.kb.store.delete_document(caller.workspace_id, kb.id, doc.id)
    async with caller.scoped(rt.db) as session:
        await session.exec(sa.delete(KbDocument).where(col(KbDocument.id) == doc.id))
        await session.commit()
    return _document_view(doc)


# -- attachments -------------------------------------------------------------------------


def _attachment_view(row: KbAttachment, attached: bool = True) -> AttachmentView:
    return AttachmentView(
        instance_id=row.instance_id,
        knowledge_base_id=row.knowledge_base_id,
        attached=attached,
        created_at=_iso(row.created_at),
    )


async def _live_instance(rt: Runtime, caller: Caller, instance_id: str) -> Instance:
    instance = await get_instance(rt, caller, instance_id)
    if instance.state.is_terminal or instance.state is InstanceState.STOPPING:
        raise Conflict(
            f"instance {instance_id} is {instance.state.value}; attach knowledge bases to "
            "a live instance",
            param="instance_id",
        )
    return instance


async def attach_knowledge_base(
    rt: Runtime, caller: Caller, instance_id: str, kb_id: str
) -> AttachmentView:
    """From now on the instance retrieves from this knowledge base. Attaching twice is
    harmless."""
    caller.require(Permission.KNOWLEDGE)
    instance = await _live_instance(rt, caller, instance_id)
    kb = await _load_kb(rt, caller, kb_id)
    async with caller.scoped(rt.db) as session:
        rows = (
            await session.exec(
                select(KbAttachment).where(col(KbAttachment.instance_id) == instance.id)
            )
        ).all()
        for row in rows:
            if row.knowledge_base_id == kb.id:
                return _attachment_view(row)
        if len(rows) >= MAX_ATTACHED:
            raise TooLarge(
                f"instance {instance.id} already retrieves from {MAX_ATTACHED} knowledge "
                "bases, the most allowed; detach one first",
                param="knowledge_base_id",
            )
        row = KbAttachment(
            workspace_id=caller.workspace_id, instance_id=instance.id, knowledge_base_id=kb.id
        )
        session.add(row)
        try:
            await session.commit()
        except IntegrityError:  # attached concurrently
            await session.rollback()
    rt.kb.forget_attachments(instance.id)
    return _attachment_view(row)


async def detach_knowledge_base(
    rt: Runtime, caller: Caller, instance_id: str, kb_id: str
) -> AttachmentView:
    """The instance stops retrieving from this knowledge base at once; the attachment
    is deleted (the knowledge base itself stays)."""
    caller.require(Permission.KNOWLEDGE)
    instance = await get_instance(rt, caller, instance_id)
    async with caller.scoped(rt.db) as session:
        row = (
            await session.exec(
                select(KbAttachment)
                .where(col(KbAttachment.instance_id) == instance.id)
                .where(col(KbAttachment.knowledge_base_id) == kb_id)
            )
        ).first()
        if row is None:
            raise NotFound(
                f"knowledge base {kb_id[:64]} is not attached to instance {instance.id}",
                param="knowledge_base_id",
            )
        await session.delete(row)
        await session.commit()
    rt.kb.forget_attachments(instance.id)
    return _attachment_view(row, attached=False)


async def list_attachments(rt: Runtime, caller: Caller, instance_id: str) -> list[AttachmentView]:
    caller.require(Permission.KNOWLEDGE)
    instance = await get_instance(rt, caller, instance_id)
    async with caller.scoped(rt.db) as session:
        rows = (
            await session.exec(
                select(KbAttachment)
                .where(col(KbAttachment.instance_id) == instance.id)
                .order_by(col(KbAttachment.created_at))
            )
        ).all()
    return [_attachment_view(r) for r in rows]


async def attachments_of_knowledge_base(
    rt: Runtime, caller: Caller, kb_id: str
) -> list[AttachmentView]:
    """The instances a knowledge base is attached to."""
    kb = await _load_kb(rt, caller, kb_id)
    async with caller.scoped(rt.db) as session:
        rows = (
            await session.exec(
                select(KbAttachment)
                .where(col(KbAttachment.knowledge_base_id) == kb.id)
                .order_by(col(KbAttachment.created_at))
            )
        ).all()
    return [_attachment_view(r) for r in rows]


# -- retrieval ---------------------------------------------------------------------------


async def _passages(
    rt: Runtime, workspace_id: str, kb_ids: list[str], query: str, top_k: int
) -> list[Passage]:
    fused = await rt.kb.search(workspace_id, kb_ids, query, top_k)
    if not fused:
        return []
    async with rt.db.scoped(workspace_id) as session:
        docs = {
            d.id: d
            for d in (
                await session.exec(
                    select(KbDocument).where(
                        col(KbDocument.id).in_({hit.document_id for hit, _ in fused})
                    )
                )
            ).all()
        }
    passages: list[Passage] = []
    for hit, score in fused:
        doc = docs.get(hit.document_id)
        if doc is None or doc.status is not DocumentStatus.READY:
            continue  # deleted, or still being written, since the search ran
        passages.append(
            Passage(
                source=len(passages) + 1,
                knowledge_base_id=hit.knowledge_base_id,
                document_id=hit.document_id,
                title=doc.title,
                chunk=hit.ordinal,
                score=round(score, 6),
                similarity=None if hit.similarity is None else round(hit.similarity, 6),
                text=hit.text,
            )
        )
    return passages


async def search_knowledge_base(
    rt: Runtime, caller: Caller, kb_id: str, req: SearchRequest
) -> list[Passage]:
    """The top_k passages of one knowledge base for a query: retrieval, no generation."""
    kb = await _load_kb(rt, caller, kb_id)
    return await _passages(rt, caller.workspace_id, [kb.id], req.query, req.top_k)


async def attached_knowledge_bases(rt: Runtime, workspace_id: str, instance_id: str) -> list[str]:
    cached = rt.kb.cached_attachments(instance_id)
    if cached is None:
        async with rt.db.scoped(workspace_id) as session:
            cached = tuple(
                (
                    await session.exec(
                        select(KbAttachment.knowledge_base_id)
                        .where(col(KbAttachment.instance_id) == instance_id)
                        .order_by(col(KbAttachment.created_at))
                    )
                ).all()
            )
        rt.kb.cache_attachments(instance_id, cached)
    return list(cached)


async def retrieve_for_instance(
    rt: Runtime, workspace_id: str, instance_id: str, query: str, top_k: int
) -> list[Passage]:
    """Passages from the knowledge bases attached to an instance (none attached: [])."""
    kb_ids = await attached_knowledge_bases(rt, workspace_id, instance_id)
    if not kb_ids or not query.strip():
        return []
    return await _passages(rt, workspace_id, kb_ids, query[:MAX_QUERY_CHARS], top_k)
