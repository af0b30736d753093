"""The JSON API's flask-smorest pieces: the Api, the Blueprint every API module routes with,
and the body parser.

The OpenAPI document is the API's contract, and a client (or a fuzzer) takes it at its word,
so what the app does beyond the views' own schemas is written into it here, from the same
facts the app acts on: the role a route is given both guards it and documents its bearer
security with 401 and 403; the request hooks every route passes through (a body too large,
a body that is not JSON, the database away) document 413, 415 and 503; a path with an id in
it documents 404. Views add only what is theirs (409, 412, 429 and their meaning).
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from typing import Any

from apispec.ext.marshmallow.field_converter import FieldConverterMixin
from flask import Response
from flask.views import MethodView
from flask_smorest import Api, Blueprint
from flask_smorest.utils import prepare_response
from marshmallow import fields
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import HTTPException

from services.publisher.auth import require_role
from services.publisher.errors import ErrorSchema, from_http_exception
from shared.text import NOT_BLANK_PATTERN, STORABLE_PATTERN, Text, not_blank

# Headers some error responses always carry, so a client knows how to react.
ERROR_HEADERS = {
    HTTPStatus.UNAUTHORIZED: {
        "WWW-Authenticate": {
            "description": "Bearer: send Authorization: Bearer <token>",
            "schema": {"type": "string"},
            "required": True,
        }
    },
    HTTPStatus.SERVICE_UNAVAILABLE: {
        "Retry-After": {
            "description": "seconds to wait before trying again",
            "schema": {"type": "integer"},
            "required": True,
        }
    },
}
WITH_BODY = ("post", "put", "patch")
PATH_ID = re.compile(r"<(?:[^:<>]+:)?[^<>]+>")
PYTHON_ANCHORS = re.compile(r"\A\\A(.*)\\Z\Z", re.DOTALL)


class JsonBodyParser(FlaskParser):
    """webargs' parser, taking JSON that Python's parser gives up on for malformed.

    ``json.loads`` raises RecursionError on JSON nested deeper than it goes (about a
    thousand ``[`` suffice) and a bare ValueError on an integer of more than 4,300 digits
    (``sys.get_int_max_str_digits``); webargs expects neither, and the client got a 500
    instead of a 400."""

    def _raw_load_json(self, req: Any) -> Any:
        try:
            return super()._raw_load_json(req)
        except json.JSONDecodeError:
            raise
        except RecursionError:
            raise json.JSONDecodeError("nested too deeply", "<request body>", 0) from None
        except ValueError as exc:
            raise json.JSONDecodeError(str(exc), "<request body>", 0) from None


class ApiBlueprint(Blueprint):
    """flask-smorest's Blueprint, parsing bodies with :class:`JsonBodyParser`, guarding each
    route with the role it is given and documenting the responses that come with it."""

    ARGUMENTS_PARSER = JsonBodyParser()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._prepare_doc_cbks.append(self._prepare_common_responses_doc)

    def route(self, rule: str, *, role: str | None, **options: Any) -> Any:
        """Register a MethodView for ``rule``, callable by tokens granting ``role`` (None:
        public). The role is required so that no route is public by omission."""
        parent = super().route(rule, **options)

        def decorator(view: type[MethodView]) -> type[MethodView]:
            if role is not None:
                view.decorators = [require_role(role), *view.decorators]
            for method in view.methods or ():
                function = getattr(view, method.lower())
                function._apidoc = {
                    **getattr(function, "_apidoc", {}),
                    "pressroom": {"role": role, "has_id": bool(PATH_ID.search(rule))},
                }
            return parent(view)

        return decorator

    def alt_response(self, status_code: int, response: Any = None, **kwargs: Any) -> Any:
        """flask-smorest's, with the error shape as the body of an error by default."""
        if response is None and int(status_code) >= 400:
            kwargs.setdefault("schema", ErrorSchema)
        return super().alt_response(status_code, response, **kwargs)

    @staticmethod
    def _prepare_common_responses_doc(
        doc: dict[str, Any], doc_info: dict[str, Any], *, method: str, **_: Any
    ) -> dict[str, Any]:
        """Responses the app gives whatever the view: see the module's docstring."""
        facts = doc_info.get("pressroom")
        if facts is None:
            raise TypeError("route API views with ApiBlueprint.route(rule, role=...)")
        responses = doc.setdefault("responses", {})
        common = [HTTPStatus.SERVICE_UNAVAILABLE]
        if facts["role"]:
            common += [HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN]
            doc["security"] = [{"bearer": []}]
            doc["x-role"] = facts["role"]
            docstring = doc_info.setdefault("docstring", {})
            needs = f"Needs a token with the {facts['role']} role."
            docstring["description"] = f"{docstring.get('description') or ''}\n\n{needs}".strip()
        else:
            doc["security"] = []
        if facts["has_id"]:
            common.append(HTTPStatus.NOT_FOUND)
        if method in WITH_BODY:
            common += [HTTPStatus.REQUEST_ENTITY_TOO_LARGE, HTTPStatus.UNSUPPORTED_MEDIA_TYPE]
            if "requestBody" in doc:
                common.append(HTTPStatus.BAD_REQUEST)
        for status in common:
            responses.setdefault(str(int(status)), status.name)
        return doc


def _document_text(
    self: FieldConverterMixin, field: fields.Field, ret: dict[str, Any], **_: Any
) -> dict[str, Any]:
    """What Pressroom's text fields accept, in the document's own regex dialect.

    JSON Schema patterns are ECMA-262, which has no ``\\A`` or ``\\Z``: a whole-string
    pattern is written with ``^`` and ``$`` (which, unlike Python's, match nowhere but the
    ends). A :class:`shared.text.Text` field without a pattern of its own gets the pattern
    of what it stores: no control characters but tab and line breaks, and something other
    than white space where the field must not be blank. Without them a client cannot tell
    a valid request from one we refuse."""
    if "pattern" in ret:
        whole = PYTHON_ANCHORS.match(ret["pattern"])
        return {"pattern": f"^{whole[1]}$"} if whole else {}
    if not isinstance(field, Text) or "enum" in ret or "format" in ret:
        return {}
    return {"pattern": NOT_BLANK_PATTERN if not_blank in field.validators else STORABLE_PATTERN}


class PressroomApi(Api):
    """flask-smorest's Api with Pressroom's error shape instead of its own, and no catch-all
    ``default`` response: each operation lists the statuses it gives, so a client (and
    Schemathesis' status code check) knows them all."""

    ERROR_SCHEMA = ErrorSchema
    DEFAULT_ERROR_RESPONSE_NAME = None

    def handle_http_exception(self, error: HTTPException) -> Response:
        return from_http_exception(error)

    def _init_spec(self, *args: Any, **kwargs: Any) -> None:
        super()._init_spec(*args, **kwargs)
        self.ma_plugin.converter.add_attribute_function(_document_text)

    def _register_responses(self) -> None:
        """One response component per status (``UNAUTHORIZED``...), each the error shape,
        with the headers that status always carries."""
        for status in HTTPStatus:
            if status < 400:
                continue
            response: dict[str, Any] = {"description": status.phrase, "schema": ErrorSchema}
            if status in ERROR_HEADERS:
                response["headers"] = ERROR_HEADERS[status]
            prepare_response(response, self.spec, self.DEFAULT_RESPONSE_CONTENT_TYPE)
            self.spec.components.response(status.name, response, lazy=True)
