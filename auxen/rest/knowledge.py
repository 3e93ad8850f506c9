"""REST endpoints for knowledge bases under /v1/knowledge-bases, and attaching them to
instances under /v1/instances/{id}/knowledge-bases. Documents arrive as multipart
uploads (`file` parts) or as JSON; uploads are read into memory only, never spooled
to a temporary file, and bounded before parsing."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from auxen.httputil import read_json_body
from auxen.runtime import Runtime
from auxen.tools import kb
from auxen.tools.context import Caller
from auxen.tools.errors import InvalidArgument, TooLarge, parse_model

FORM_OVERHEAD_BYTES = 1_048_576  # titles, part headers and boundaries around the files


class KnowledgeApi:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def _caller(self, request: Request) -> Caller:
        return await self.rt.auth.for_request(request)

    async def create(self, request: Request) -> Response:
        caller = await self._caller(request)
        req = parse_model(
            kb.CreateKnowledgeBaseRequest,
            await read_json_body(request, self.rt.settings.max_body_bytes),
        )
        view = await kb.create_knowledge_base(self.rt, caller, req)
        return JSONResponse(view.model_dump(mode="json"), status_code=201)

    async def list_all(self, request: Request) -> Response:
        caller = await self._caller(request)
        views = await kb.list_knowledge_bases(self.rt, caller)
        return JSONResponse({"object": "list", "data": [v.model_dump(mode="json") for v in views]})

    async def get(self, request: Request) -> Response:
        caller = await self._caller(request)
        view = await kb.get_knowledge_base(self.rt, caller, request.path_params["kb_id"])
        return JSONResponse(view.model_dump(mode="json"))

    async def delete(self, request: Request) -> Response:
        caller = await self._caller(request)
        view = await kb.delete_knowledge_base(self.rt, caller, request.path_params["kb_id"])
        return JSONResponse({**view.model_dump(mode="json"), "deleted": True})

    # -- documents -------------------------------------------------------------------

    async def add_documents(self, request: Request) -> Response:
        caller = await self._caller(request)
        kb_id = request.path_params["kb_id"]
        await kb.get_knowledge_base(self.rt, caller, kb_id)  # 404 before reading a body
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            docs = await self._uploaded(request)
        elif content_type.startswith("application/json"):
            limit = self.rt.settings.kb_max_document_bytes * 4 // 3 + FORM_OVERHEAD_BYTES
            body = parse_model(kb.AddDocumentsRequest, await read_json_body(request, limit))
            docs = kb.documents_from_inputs(body.documents)
        else:
            raise InvalidArgument(
                "send documents as multipart/form-data (one `file` part per document, "
                "optional `title` parts) or as JSON {documents: [{title, text | "
                "content_base64, content_type}]}",
                param="content-type",
            )
        added = await kb.add_documents(self.rt, caller, kb_id, docs)
        data = [{**a.document.model_dump(mode="json"), "duplicate": a.duplicate} for a in added]
        status = 200 if all(a.duplicate for a in added) else 201
        return JSONResponse({"object": "list", "data": data}, status_code=status)

    async def _uploaded(self, request: Request) -> list[kb.NewDocument]:
        settings = self.rt.settings
        limit = settings.kb_max_document_bytes + FORM_OVERHEAD_BYTES
        body = await _bounded_body(request, limit)

        async def replay() -> AsyncGenerator[bytes, None]:
            yield body

        parser = _InMemoryMultiPart(
            request.headers,
            replay(),
            max_files=settings.kb_max_documents_per_request,
            max_fields=settings.kb_max_documents_per_request * 2,
        )
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise InvalidArgument(
                f"the upload is not valid multipart: {exc}", param="file"
            ) from None
        files = [f for f in form.getlist("file") if isinstance(f, UploadFile)]
        if not files:
            raise InvalidArgument("the upload has no `file` part", param="file")
        titles = [t for t in form.getlist("title") if isinstance(t, str)]
        if titles and len(titles) != len(files):
            raise InvalidArgument(
                "give one `title` per `file`, or none (titles default to file names)",
                param="title",
            )
        docs = []
        for i, upload in enumerate(files):
            data = await upload.read()
            title = titles[i] if titles else (upload.filename or f"document {i + 1}")
            docs.append(kb.NewDocument(title, upload.content_type, upload.filename, data))
            await upload.close()
        return docs

    async def list_documents(self, request: Request) -> Response:
        caller = await self._caller(request)
        views = await kb.list_documents(self.rt, caller, request.path_params["kb_id"])
        return JSONResponse({"object": "list", "data": [v.model_dump(mode="json") for v in views]})

    async def delete_document(self, request: Request) -> Response:
        caller = await self._caller(request)
        view = await kb.delete_document(
            self.rt, caller, request.path_params["kb_id"], request.path_params["doc_id"]
        )
        return JSONResponse({**view.model_dump(mode="json"), "deleted": True})

    async def search(self, request: Request) -> Response:
        caller = await self._caller(request)
        req = parse_model(
            kb.SearchRequest, await read_json_body(request, self.rt.settings.max_body_bytes)
        )
        passages = await kb.search_knowledge_base(
            self.rt, caller, request.path_params["kb_id"], req
        )
        return JSONResponse(
            {"object": "list", "data": [p.model_dump(mode="json") for p in passages]}
        )

    # -- attachments -----------------------------------------------------------------

    async def attach(self, request: Request) -> Response:
        caller = await self._caller(request)
        body = await read_json_body(request, self.rt.settings.max_body_bytes)
        kb_id = body.get("knowledge_base_id")
        if not isinstance(kb_id, str) or not kb_id or set(body) != {"knowledge_base_id"}:
            raise InvalidArgument('send {"knowledge_base_id": "kb_..."}', param="knowledge_base_id")
        view = await kb.attach_knowledge_base(self.rt, caller, request.path_params["id"], kb_id)
        return JSONResponse(view.model_dump(mode="json"))

    async def detach(self, request: Request) -> Response:
        caller = await self._caller(request)
        view = await kb.detach_knowledge_base(
            self.rt, caller, request.path_params["id"], request.path_params["kb_id"]
        )
        return JSONResponse(view.model_dump(mode="json"))

    async def attachments(self, request: Request) -> Response:
        caller = await self._caller(request)
        views = await kb.list_attachments(self.rt, caller, request.path_params["id"])
        return JSONResponse({"object": "list", "data": [v.model_dump(mode="json") for v in views]})


class _InMemoryMultiPart(MultiPartParser):
    # Uploaded documents must not land in temporary files: keep every part in memory
    # (the body was already bounded).
    spool_max_size = 1 << 40


async def _bounded_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the upload is larger than {limit} bytes", param="file")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise TooLarge(f"the upload is larger than {limit} bytes", param="file")
    return bytes(raw)
