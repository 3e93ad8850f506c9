"""Knowledge bases: create, list, delete; add, list, delete documents; attach to and
detach from instances; search without generation."""

from typing import Annotated, Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from mcp_types import ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from auxen.kb.documents import supported_list
from auxen.mcp_server.args import DocumentId, InstanceId, KnowledgeBaseId, TopK
from auxen.mcp_server.server import ACTS, READ_ONLY, ToolEnv, scope
from auxen.tools import kb
from auxen.tools.views import AttachmentView, DocumentView, KnowledgeBaseView, Passage

DESTRUCTIVE = ToolAnnotations(
    read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
)
# Attaching twice, or adding the same document twice, changes nothing more.
IDEMPOTENT = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)


class DocumentArg(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=300, description="Shown in citations", strict=True)
    text: str | None = Field(
        default=None,
        min_length=1,
        description="The document as text (plain, Markdown or HTML). Give text or content_base64.",
        strict=True,
    )
    content_base64: str | None = Field(
        default=None,
        min_length=1,
        description="The document's bytes, base64 (for PDFs). Give text or content_base64.",
        strict=True,
    )
    content_type: str | None = Field(
        default=None,
        max_length=100,
        description=f"One of: {supported_list()}. Default text/plain for text; required "
        "for content_base64.",
        strict=True,
    )


Name = Annotated[
    str,
    Field(description="A name unique in this workspace", min_length=1, max_length=200, strict=True),
]
Documents = Annotated[
    list[DocumentArg],
    Field(description="Documents to add, each with a title", min_length=1, max_length=64),
]
Query = Annotated[
    str, Field(description="What to look for", min_length=1, max_length=4000, strict=True)
]


class KnowledgeBaseList(BaseModel):
    knowledge_bases: list[KnowledgeBaseView]


class AddedDocument(BaseModel):
    document: DocumentView
    duplicate: bool = Field(
        description="True when the same bytes were already in the knowledge base: nothing "
        "was added, this is the existing document"
    )


class AddedDocuments(BaseModel):
    documents: list[AddedDocument]


class DocumentList(BaseModel):
    documents: list[DocumentView]


class AttachmentList(BaseModel):
    attachments: list[AttachmentView]


class SearchResult(BaseModel):
    knowledge_base_id: str
    passages: list[Passage] = Field(description="Best first, by hybrid (vector + text) rank")


def tools(env: ToolEnv) -> list[Tool]:
    async def create_knowledge_base(ctx: Context[Any, Any], name: Name) -> KnowledgeBaseView:
        req = env.parse(kb.CreateKnowledgeBaseRequest, {"name": name})
        return await env.call(ctx, kb.create_knowledge_base, req)

    async def list_knowledge_bases(ctx: Context[Any, Any]) -> KnowledgeBaseList:
        return KnowledgeBaseList(knowledge_bases=await env.call(ctx, kb.list_knowledge_bases))

    async def delete_knowledge_base(
        ctx: Context[Any, Any], knowledge_base_id: KnowledgeBaseId
    ) -> KnowledgeBaseView:
        return await env.call(ctx, kb.delete_knowledge_base, knowledge_base_id)

    async def add_documents(
        ctx: Context[Any, Any], knowledge_base_id: KnowledgeBaseId, documents: Documents
    ) -> AddedDocuments:
        req = env.parse(
            kb.AddDocumentsRequest,
            {"documents": [d.model_dump(exclude_none=True) for d in documents]},
        )

        async def add(rt: Any, caller: Any) -> list[kb.AddedDocument]:
            docs = kb.documents_from_inputs(req.documents)
            return await kb.add_documents(rt, caller, knowledge_base_id, docs)

        added = await env.call(ctx, add)
        return AddedDocuments(
            documents=[AddedDocument(document=a.document, duplicate=a.duplicate) for a in added]
        )

    async def list_documents(
        ctx: Context[Any, Any], knowledge_base_id: KnowledgeBaseId
    ) -> DocumentList:
        return DocumentList(documents=await env.call(ctx, kb.list_documents, knowledge_base_id))

    async def delete_document(
        ctx: Context[Any, Any], knowledge_base_id: KnowledgeBaseId, document_id: DocumentId
    ) -> DocumentView:
        return await env.call(ctx, kb.delete_document, knowledge_base_id, document_id)

    async def attach_knowledge_base(
        ctx: Context[Any, Any], instance_id: InstanceId, knowledge_base_id: KnowledgeBaseId
    ) -> AttachmentView:
        return await env.call(ctx, kb.attach_knowledge_base, instance_id, knowledge_base_id)

    async def detach_knowledge_base(
        ctx: Context[Any, Any], instance_id: InstanceId, knowledge_base_id: KnowledgeBaseId
    ) -> AttachmentView:
        return await env.call(ctx, kb.detach_knowledge_base, instance_id, knowledge_base_id)

    async def list_attachments(ctx: Context[Any, Any], instance_id: InstanceId) -> AttachmentList:
        return AttachmentList(attachments=await env.call(ctx, kb.list_attachments, instance_id))

    async def search_knowledge_base(
        ctx: Context[Any, Any], knowledge_base_id: KnowledgeBaseId, query: Query, top_k: TopK = 5
    ) -> SearchResult:
        req = env.parse(kb.SearchRequest, {"query": query, "top_k": top_k})
        passages = await env.call(ctx, kb.search_knowledge_base, knowledge_base_id, req)
        return SearchResult(knowledge_base_id=knowledge_base_id, passages=passages)

    return [
        Tool.from_function(
            create_knowledge_base,
            meta=scope("kb"),
            title="Create a knowledge base",
            description="A new, empty knowledge base in this workspace. Add documents with "
            "add_documents, then attach it to an instance so query_instance answers from it "
            "with citations.",
            annotations=ACTS,
        ),
        Tool.from_function(
            list_knowledge_bases,
            meta=scope("kb"),
            title="List knowledge bases",
            description="This workspace's knowledge bases with their document and chunk "
            "counts, newest first.",
            annotations=READ_ONLY,
        ),
        Tool.from_function(
            delete_knowledge_base,
            meta=scope("kb"),
            title="Delete a knowledge base",
            description="Delete the knowledge base with all its documents and embeddings, "
            "and detach it from every instance. Cannot be undone.",
            annotations=DESTRUCTIVE,
        ),
        Tool.from_function(
            add_documents,
            meta=scope("kb"),
            title="Add documents",
            description="Add documents to a knowledge base: each is read, split into "
            "chunks, embedded and indexed before this returns. Give text for plain text, "
            "Markdown or HTML, or content_base64 with content_type application/pdf for a "
            "PDF. Adding the same bytes again returns the existing document "
            "(duplicate=true). Larger files: upload over REST. If one document is bad, "
            "none is added.",
            annotations=IDEMPOTENT,
        ),
        Tool.from_function(
            list_documents,
            meta=scope("kb"),
            title="List documents",
            description="The documents of a knowledge base: id, title, type, size, chunks.",
            annotations=READ_ONLY,
        ),
        Tool.from_function(
            delete_document,
            meta=scope("kb"),
            title="Delete a document",
            description="Delete one document and its embeddings from a knowledge base.",
            annotations=DESTRUCTIVE,
        ),
        Tool.from_function(
            attach_knowledge_base,
            meta=scope("kb"),
            title="Attach a knowledge base to an instance",
            description="From now on query_instance and the instance's chat endpoint "
            "retrieve passages from this knowledge base for each question and give them to "
            "the model as numbered sources; answers come with citations. Up to 10 per "
            "instance. Attaching twice is harmless.",
            annotations=IDEMPOTENT,
        ),
        Tool.from_function(
            detach_knowledge_base,
            meta=scope("kb"),
            title="Detach a knowledge base from an instance",
            description="The instance stops retrieving from this knowledge base at once. "
            "The knowledge base itself is kept.",
            annotations=ToolAnnotations(
                read_only_hint=False,
                destructive_hint=False,
                idempotent_hint=False,
                open_world_hint=False,
            ),
        ),
        Tool.from_function(
            list_attachments,
            meta=scope("kb"),
            title="List an instance's knowledge bases",
            description="The knowledge bases an instance retrieves from.",
            annotations=READ_ONLY,
        ),
        Tool.from_function(
            search_knowledge_base,
            meta=scope("kb"),
            title="Search a knowledge base",
            description="The passages of a knowledge base that best match a query (hybrid "
            "vector and full-text search), with their documents and scores. No model is "
            "involved and nothing is stored.",
            annotations=READ_ONLY,
        ),
    ]
