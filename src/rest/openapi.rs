//! The error statuses every route can answer with, added to the OpenAPI
//! document in one place, so that a client generated from it (or a request
//! generator such as schemathesis) meets no undocumented status.

use utoipa::Modify;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::{ContentBuilder, ObjectBuilder, RefOr, Type};

/// Routes open to every caller (no API key, no parameters).
const OPEN_ROUTES: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// Statuses any route can return, whatever it does.
const EVERY_ROUTE: &[(&str, &str)] = &[
    ("405", "The route does not take this method"),
    ("500", "An internal error"),
    ("503", "The store is unavailable"),
    ("504", "The request took longer than the request timeout"),
];

/// Statuses that may come without a body: a request target past 16 KiB is
/// answered in JSON, but past 64 KiB the HTTP layer answers 414 itself, and a
/// request head past its 128 KiB buffer gets 431, both with no body, so no
/// content type is promised for them.
const WITHOUT_BODY: &[(&str, &str)] = &[
    ("414", "The request target is too long (JSON up to 64 KiB; longer ones get no body)"),
    ("431", "The request's headers are too large (no body)"),
];

/// Statuses of the routes behind an API key.
const AUTHENTICATED_ROUTES: &[(&str, &str)] = &[
    ("400", "A bad parameter or body, naming the field"),
    ("401", "Missing, unknown or revoked API key"),
    ("403", "The API key may not act for this organization"),
    ("404", "Not found (another organization's data answers the same)"),
    ("413", "The request body is too large"),
    ("429", "Rate limited (per key, or too many failed authentications); see Retry-After"),
];

pub struct ErrorResponses;

fn error_body() -> ContentBuilder {
    ContentBuilder::new().schema(Some(
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("grpc-gateway's {code, message, details} (the per-call route: {detail})")),
    ))
}

fn add(operation: &mut Operation, statuses: &[(&str, &str)]) {
    for (status, description) in statuses {
        operation.responses.responses.entry((*status).to_owned()).or_insert_with(|| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(*description)
                    .content("application/json", error_body().build())
                    .build(),
            )
        });
    }
}

impl Modify for ErrorResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        // The documented APIs also accept `Authorization: AccessKey <key>`.
        components.add_security_scheme(
            "accessKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description("Authorization", "AccessKey <key>"))),
        );
        for (path, item) in openapi.paths.paths.iter_mut() {
            let open = OPEN_ROUTES.contains(&path.as_str());
            for operation in
                [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete].into_iter().flatten()
            {
                add(operation, EVERY_ROUTE);
                for (status, description) in WITHOUT_BODY {
                    operation
                        .responses
                        .responses
                        .entry((*status).to_owned())
                        .or_insert_with(|| RefOr::T(ResponseBuilder::new().description(*description).build()));
                }
                if !open {
                    add(operation, AUTHENTICATED_ROUTES);
                }
            }
        }
    }
}
