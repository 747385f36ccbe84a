"""The OpenAPI 3.1 document, generated from the declared operations and their pydantic models."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from gateway.api.permissions import roles_with
from gateway.api.routing import API_PREFIX, Operation
from gateway.api.schemas import ErrorResponse, PageQuery
from parley.models import Role

OPENAPI_PATH = f"{API_PREFIX}/openapi.json"
REF_TEMPLATE = "#/components/schemas/{model}"
_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}

# Named error responses shared by the operations: (status, component name, description).
_ERRORS = {
    400: (
        "BadRequest",
        "The body is not JSON (`invalid_json`) or the cursor is not valid (`invalid_cursor`).",
    ),
    401: ("Unauthorized", "No API token, or an unknown or revoked one (`unauthorized`)."),
    403: ("Forbidden", "The token's role lacks the permission (`forbidden`)."),
    404: ("NotFound", "No such object in this tenant (`not_found`)."),
    409: ("Conflict", "The change conflicts with the current state (`conflict`)."),
    422: ("UnprocessableEntity", "The request is well-formed but invalid (`validation_error` and others)."),
    502: ("BadGateway", "A server Parley relies on refused the request (`mail_not_sent`)."),
    503: (
        "ServiceUnavailable",
        "The database could not complete the request; retry (`database_unavailable`).",
    ),
}


def _error_responses() -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for name, description in _ERRORS.values():
        responses[name] = {
            "description": description,
            "content": {"application/json": {"schema": _ERROR_REF}},
        }
    responses["Unauthorized"]["headers"] = {
        "WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}
    }
    return responses


def _error_ref(status: int) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{_ERRORS[status][0]}"}


def _error_statuses(op: Operation) -> list[int]:
    statuses = {401, 503, *op.errors}
    if op.permission is not None and len(roles_with(op.permission)) < len(Role):
        statuses.add(403)
    if op.path_params:
        statuses.add(404)
    if op.body_model is not None or (op.query_model is not None and issubclass(op.query_model, PageQuery)):
        statuses.add(400)
    if op.body_model is not None or op.query_model is not None:
        statuses.add(422)
    return sorted(statuses)


# Keyed by (model, mode), as pydantic's `models_json_schema` answers.
_Refs = dict[tuple[Any, JsonSchemaMode], dict[str, Any]]


def _model_schemas(operations: Sequence[Operation]) -> tuple[_Refs, dict[str, Any]]:
    """Schemas of every model the operations use, with `$defs` collected for `components.schemas`."""
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {(ErrorResponse, "serialization"): None}
    for op in operations:
        uses: list[tuple[type[BaseModel] | None, JsonSchemaMode]] = [
            (op.body_model, "validation"),
            (op.query_model, "validation"),
            (op.response_model, "serialization"),
        ]
        for model, mode in uses:
            if model is not None:
                wanted[(model, mode)] = None
    refs, defs = models_json_schema(list(wanted), ref_template=REF_TEMPLATE)
    return dict(refs), dict(defs.get("$defs", {}))


def _component_name(ref: dict[str, Any]) -> str:
    return str(ref["$ref"]).rsplit("/", 1)[-1]


def _query_parameters(schema: dict[str, Any]) -> list[dict[str, Any]]:
    required = set(schema.get("required", ()))
    parameters = []
    for name, prop in schema.get("properties", {}).items():
        prop = {k: v for k, v in prop.items() if k != "title" and not (k == "default" and v is None)}
        # A query string cannot carry null: an absent parameter is the null.
        options = [o for o in prop.pop("anyOf", ()) if o != {"type": "null"}]
        if len(options) == 1:
            prop.update(options[0])
        elif options:
            prop["anyOf"] = options
        parameter: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": prop,
        }
        if "description" in prop:
            parameter["description"] = prop.pop("description")
        parameters.append(parameter)
    return parameters


def _description(op: Operation) -> str:
    if op.permission is None:
        access = "Any authenticated role."
    else:
        roles = ", ".join(roles_with(op.permission))
        access = f"Requires the `{op.permission}` permission (roles: {roles})."
    return f"{op.description}\n\n{access}".strip()


def _webhook_operation(summary: str, description: str, operation_id: str) -> dict[str, Any]:
    provider_body = {"schema": {"type": "object", "additionalProperties": True}}
    return {
        "post": {
            "operationId": operation_id,
            "summary": summary,
            "description": description,
            "tags": ["webhooks"],
            "security": [],
            "parameters": [_path_parameter("inbox_id")],
            "requestBody": {
                "required": True,
                "description": "The provider's own payload, signed by the provider.",
                "content": {
                    "application/x-www-form-urlencoded": provider_body,
                    "application/json": provider_body,
                },
            },
            "responses": {
                "200": {
                    "description": "Stored (or a duplicate); the body is what the provider expects "
                    "(TwiML for Twilio).",
                    "content": {
                        "text/xml": {"schema": {"type": "string"}},
                        "text/plain": {"schema": {"type": "string"}},
                    },
                },
                "400": {
                    "description": "Signed but not understood (`malformed_payload`); nothing stored.",
                    "content": {"application/json": {"schema": _ERROR_REF}},
                },
                "403": {
                    "description": "Unsigned, wrongly signed or stale (`invalid_signature`); nothing stored.",
                    "content": {"application/json": {"schema": _ERROR_REF}},
                },
                "404": _error_ref(404),
                "503": _error_ref(503),
            },
        }
    }


def _path_parameter(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}


def build_openapi(operations: Sequence[Operation]) -> dict[str, Any]:
    """The OpenAPI 3.1 document describing `operations`, the webhooks and this document itself."""
    refs, schemas = _model_schemas(operations)
    paths: dict[str, dict[str, Any]] = {}
    query_models: set[str] = set()
    for op in operations:
        operation: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "description": _description(op),
            "tags": [op.tag],
            "parameters": [_path_parameter(name) for name in op.path_params],
        }
        if op.query_model is not None:
            name = _component_name(refs[(op.query_model, "validation")])
            query_models.add(name)
            operation["parameters"] += _query_parameters(schemas[name])
        if op.body_model is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": refs[(op.body_model, "validation")]}},
            }
        responses: dict[str, Any] = {}
        if op.response_model is None:
            responses[str(op.status)] = {"description": "Done; no content."}
        else:
            responses[str(op.status)] = {
                "description": op.summary,
                "content": {"application/json": {"schema": refs[(op.response_model, "serialization")]}},
            }
        for status in _error_statuses(op):
            responses[str(status)] = _error_ref(status)
        operation["responses"] = responses
        paths.setdefault(op.full_path, {})[op.method.lower()] = operation

    # Query models are spelled out as parameters; as schemas of their own they would only be noise.
    bodies = {_component_name(refs[(op.body_model, "validation")]) for op in operations if op.body_model}
    bodies |= {
        _component_name(refs[(op.response_model, "serialization")]) for op in operations if op.response_model
    }
    for name in query_models - bodies:
        del schemas[name]

    paths["/webhooks/{inbox_id}"] = _webhook_operation(
        "Receive a provider webhook",
        "Where the provider posts incoming messages: give it the inbox's `webhook_url`. The request "
        "is verified with the inbox's credentials and stored in one transaction; the provider retries "
        "on a 5xx.",
        "receive_webhook",
    )
    paths["/webhooks/{inbox_id}/status"] = _webhook_operation(
        "Receive a delivery report",
        "Where the provider posts delivery status callbacks (`status_callback_url`): they move sent "
        "messages to delivered, read or failed.",
        "receive_status_callback",
    )
    paths[OPENAPI_PATH] = {
        "get": {
            "operationId": "get_openapi",
            "summary": "Get this OpenAPI document",
            "tags": ["meta"],
            "security": [],
            "responses": {
                "200": {
                    "description": "The OpenAPI 3.1 document.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Parley API",
            "version": _version(),
            "description": "Parley's REST API. Authenticate with `Authorization: Bearer <token>`; every "
            "object belongs to the token's tenant. Lists are paginated with `limit` and `cursor`: pass "
            "the `next_cursor` of a page to get the next one. Errors are "
            '`{"error": {"code", "message"}}`.',
        },
        "security": [{"bearerAuth": []}],
        "tags": [
            {"name": tag} for tag in dict.fromkeys([*(op.tag for op in operations), "webhooks", "meta"])
        ],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "description": "An API token (`prl_…`)."}
            },
            "schemas": dict(sorted(schemas.items())),
            "responses": _error_responses(),
        },
    }


def _version() -> str:
    try:
        return metadata.version("parley")
    except metadata.PackageNotFoundError:
        return "0"
