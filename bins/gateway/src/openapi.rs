//! The OpenAPI 3.1 document of the player API (`GET /openapi.json`), made by `utoipa`
//! from the handlers' `#[utoipa::path]` annotations (`api.rs`, `game_proxy.rs`) and the
//! bodies' types (`mm_shared::protocol`, with its `openapi` feature). A route added to
//! `api::routes` needs its annotation and a line here; the gateway's `openapi` test
//! fails until it has both.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "matchmaking-sim player API",
        description = "The gateway's HTTP API: sessions, matchmaking, parties, the store and the game \
                       WebSocket. Errors are JSON `{\"error\": \"...\"}` with a 4xx status for the \
                       client's mistakes and a 5xx only for the server's own failures."
    ),
    paths(
        crate::api::login,
        crate::api::logout,
        crate::api::join,
        crate::api::queues,
        crate::api::status,
        crate::api::cancel,
        crate::api::create_party,
        crate::api::join_party,
        crate::api::get_party,
        crate::api::leave_party,
        crate::api::offers,
        crate::api::purchase,
        crate::game_proxy::connect,
        crate::api::openapi_json,
    ),
    components(schemas(crate::error::ErrorBody)),
    modifiers(&BearerToken),
)]
struct ApiDoc;

/// The `bearer` security scheme the player routes name: `Authorization: Bearer <token>`
/// with the token of `POST /login`.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "The token `POST /login` returned: a JWT signed with Ed25519 (EdDSA), \
                         whose public keys are in NATS KV bucket `session_keys`",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[cfg(test)]
mod tests {
    /// `api::ROUTES` (which the metrics' start-up series come from) and the document name
    /// the same operations; the `openapi` integration test ties the document to `routes()`.
    #[test]
    fn the_route_table_and_the_document_agree() {
        let document = serde_json::to_value(super::document()).expect("JSON");
        let mut documented = std::collections::BTreeSet::new();
        for (path, item) in document["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("item").keys() {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
        let listed: std::collections::BTreeSet<(String, String)> = crate::api::ROUTES
            .iter()
            .map(|(method, path, _)| ((*method).to_owned(), (*path).to_owned()))
            .collect();
        assert_eq!(listed, documented);
    }
}
