//! The delivery console: a browser app at `/console`, its static files
//! compiled into the binary (no CDN, nothing fetched at run time, works
//! offline). The shell and its scripts are open, like `/healthz`: they carry
//! no data. Every data call the app makes goes to the REST routes with the
//! key the user typed, which the app keeps in the tab's session storage.
//!
//! Each response carries a strict Content-Security-Policy: scripts, styles
//! and connections to this origin only, no inline script or style, no
//! framing, no forms posting anywhere, and Trusted Types required, so that
//! assigning a string to `innerHTML` (or any other HTML sink) throws instead
//! of parsing a webhook's body as markup. The app renders every value with
//! `textContent` and DOM calls.

use std::sync::LazyLock;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::Digest;

/// Paths the console answers (and the authentication layer lets through).
pub fn is_console(path: &str) -> bool {
    path == PREFIX || path.starts_with("/console/")
}

const PREFIX: &str = "/console";

pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; font-src 'self'; manifest-src 'self'; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'none'; require-trusted-types-for 'script'; trusted-types 'none'";

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    /// A strong validator of the body, so that a revalidation costs a 304.
    etag: HeaderValue,
}

macro_rules! asset {
    ($path:literal, $file:literal, $type:literal) => {
        ($path, $type, include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/console/", $file)).as_slice())
    };
}

static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    [
        asset!("/console", "index.html", "text/html; charset=utf-8"),
        asset!("/console/", "index.html", "text/html; charset=utf-8"),
        asset!("/console/console.css", "console.css", "text/css; charset=utf-8"),
        asset!("/console/favicon.svg", "favicon.svg", "image/svg+xml"),
        asset!("/console/js/app.js", "js/app.js", "text/javascript; charset=utf-8"),
        asset!("/console/js/api.js", "js/api.js", "text/javascript; charset=utf-8"),
        asset!("/console/js/dom.js", "js/dom.js", "text/javascript; charset=utf-8"),
        asset!("/console/js/format.js", "js/format.js", "text/javascript; charset=utf-8"),
        asset!("/console/js/logs.js", "js/logs.js", "text/javascript; charset=utf-8"),
        asset!("/console/js/request.js", "js/request.js", "text/javascript; charset=utf-8"),
        asset!("/console/js/endpoints.js", "js/endpoints.js", "text/javascript; charset=utf-8"),
        asset!("/console/js/charts.js", "js/charts.js", "text/javascript; charset=utf-8"),
    ]
    .into_iter()
    .map(|(path, content_type, body)| {
        let digest = sha2::Sha256::digest(body);
        let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        let etag = HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is a valid header value");
        Asset { path, content_type, body, etag }
    })
    .collect()
});

/// The headers every console response carries, found or not.
fn secure(headers: &mut HeaderMap) {
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    headers.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
}

/// Serves one console file. Files keep their names across releases, so
/// browsers must revalidate (`no-cache`) and get a 304 while the ETag holds.
pub async fn serve(request: Request) -> Response {
    let asset = ASSETS.iter().find(|a| a.path == request.uri().path());
    let method_ok = matches!(*request.method(), axum::http::Method::GET | axum::http::Method::HEAD);
    let mut response = match asset {
        _ if !method_ok => {
            let mut r = (StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n").into_response();
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            r
        }
        None => (StatusCode::NOT_FOUND, "no such console file\n").into_response(),
        Some(a) => {
            let fresh = request
                .headers()
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|tag| tag.trim() == a.etag.to_str().unwrap_or_default()));
            let mut r = if fresh {
                StatusCode::NOT_MODIFIED.into_response()
            } else {
                let mut r = a.body.into_response();
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(a.content_type));
                r
            };
            r.headers_mut().insert(header::ETAG, a.etag.clone());
            r
        }
    };
    let cache = if asset.is_some() && method_ok { "no-cache" } else { "no-store" };
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if !response.headers().contains_key(header::CONTENT_TYPE) && response.status() != StatusCode::NOT_MODIFIED {
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    }
    secure(response.headers_mut());
    response
}

/// The console as a router of its own, compressed like the REST routes.
pub fn router() -> axum::Router {
    axum::Router::new().fallback(serve).layer(tower_http::compression::CompressionLayer::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_embedded_and_only_console_paths_are_console() {
        assert!(ASSETS.iter().all(|a| !a.body.is_empty() && is_console(a.path)));
        assert!(is_console("/console") && is_console("/console/js/app.js"));
        assert!(!is_console("/consoles") && !is_console("/v1/console"));
    }
}
