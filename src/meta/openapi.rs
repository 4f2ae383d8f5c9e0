//! The OpenAPI 3 document of the meta API (`GET /openapi`). Every route listed here is served by
//! `meta::route`; a test calls each one.

use serde_json::{json, Value};

/// (method, path, summary, success status) of every route.
pub const ROUTES: &[(&str, &str, &str, &str)] = &[
    (
        "get",
        "/health",
        "Health: 200 once storage is open and every core serves",
        "200",
    ),
    ("get", "/metrics", "Prometheus metrics", "200"),
    (
        "delete",
        "/invocations",
        "Cancel an invocation: it fails with ABORTED and its key is released (404 if unknown)",
        "200",
    ),
    ("get", "/openapi", "This document", "200"),
    (
        "post",
        "/endpoints",
        "Register a service endpoint (runs discovery)",
        "201",
    ),
    ("get", "/endpoints", "List registered endpoints", "200"),
    ("get", "/endpoints/{endpoint}", "One endpoint", "200"),
    (
        "delete",
        "/endpoints/{endpoint}",
        "Remove an endpoint and its services (needs ?force=true)",
        "202",
    ),
    (
        "post",
        "/services/discover",
        "Register a service endpoint (0.1.0 alias)",
        "200",
    ),
    ("get", "/services", "List registered services", "200"),
    ("get", "/services/{service}", "One service", "200"),
    (
        "patch",
        "/services/{service}",
        "Make a service public or not",
        "200",
    ),
    (
        "get",
        "/services/{service}/descriptors",
        "The service's FileDescriptorSet (its file and every import), for grpcurl -protoset",
        "200",
    ),
    (
        "get",
        "/services/{service}/methods",
        "A service's methods",
        "200",
    ),
    (
        "get",
        "/services/{service}/methods/{method}",
        "One method",
        "200",
    ),
];

fn parameters(path: &str) -> Vec<Value> {
    let mut out: Vec<Value> = path
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
        .collect();
    if path == "/endpoints/{endpoint}" {
        out.push(json!({ "name": "force", "in": "query", "required": false, "schema": { "type": "boolean" } }));
    }
    out
}

fn request_body(method: &str, path: &str) -> Option<Value> {
    let schema = match (method, path) {
        ("post", "/endpoints") | ("post", "/services/discover") => {
            json!({ "$ref": "#/components/schemas/RegisterEndpointRequest" })
        }
        ("patch", "/services/{service}") => {
            json!({ "$ref": "#/components/schemas/ModifyServiceRequest" })
        }
        ("delete", "/invocations") => {
            json!({ "$ref": "#/components/schemas/CancelInvocationRequest" })
        }
        _ => return None,
    };
    Some(json!({ "required": true, "content": { "application/json": { "schema": schema } } }))
}

/// The document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for (method, path, summary, status) in ROUTES {
        let mut operation = json!({
            "summary": summary,
            "operationId": format!("{method}{}", path.replace(['/', '{', '}'], "_")),
            "parameters": parameters(path),
            "responses": {
                *status: { "description": "Success", "content": { "application/json": {} } },
                "default": { "description": "Error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }
            }
        });
        if path.ends_with("/descriptors") {
            operation["responses"][*status]["content"] = json!({ "application/x-protobuf": {} });
        }
        if let Some(body) = request_body(method, path) {
            operation["requestBody"] = body;
        }
        if *path == "/health" {
            // Probes need no token (see SECURITY.md).
            operation["security"] = json!([]);
        }
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = operation;
    }
    json!({
        "openapi": "3.0.3",
        "info": { "title": "Meta REST Operational API", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        // Required only when meta.auth_token is set.
        "security": [{ "bearer": [] }],
        "components": {
          "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer",
            "description": "meta.auth_token, when set; clients read it from RESTATE_META_TOKEN" } },
          "schemas": {
            "Error": { "type": "object", "required": ["message"], "properties": {
                "message": { "type": "string" }, "restate_code": { "type": "string", "nullable": true } } },
            "RegisterEndpointRequest": { "type": "object", "required": ["uri"], "properties": {
                "uri": { "type": "string", "description": "http(s)://host[:port][/path], without credentials" },
                "additional_headers": { "type": "object", "additionalProperties": { "type": "string" },
                  "description": "Sent with every request to the endpoint; write-only (shown as ***)" },
                "force": { "type": "boolean", "default": true } } },
            "CancelInvocationRequest": { "type": "object", "required": ["sid"], "properties": {
                "sid": { "description": "The sid token (string) or {service, key?, invocation_id}" } } },
            "CancelInvocationRequest": { "type": "object", "required": ["sid"], "properties": {
                "sid": { "description": "The sid token, or {service, key?, invocation_id}" } } },
            "ModifyServiceRequest": { "type": "object", "required": ["public"], "properties": {
                "public": { "type": "boolean" } } }
        } }
    })
}
