//! The browser console: its files are served without a key under a strict
//! Content-Security-Policy, while its data calls need one; and the live tail
//! reaches a browser uncompressed. The console itself is driven in a real
//! browser by scripts/test-console.

use uuid::Uuid;

use crate::helpers::*;

const FILES: [(&str, &str); 5] = [
    ("/console", "text/html; charset=utf-8"),
    ("/console/", "text/html; charset=utf-8"),
    ("/console/console.css", "text/css; charset=utf-8"),
    ("/console/js/app.js", "text/javascript; charset=utf-8"),
    ("/console/favicon.svg", "image/svg+xml"),
];

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

fn assert_locked_down(r: &reqwest::Response, what: &str) {
    let csp = header(r, "content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self' data:",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "require-trusted-types-for 'script'",
    ] {
        assert!(csp.contains(directive), "{what}: {directive:?} missing from {csp:?}");
    }
    assert!(!csp.contains("unsafe"), "{what}: {csp}");
    assert_eq!(header(r, "x-content-type-options"), "nosniff", "{what}");
}

#[tokio::test]
async fn the_console_is_served_without_a_key_under_a_strict_policy() {
    let app = spawn_app().await;
    let http = reqwest::Client::new();
    for (path, content_type) in FILES {
        let r = http.get(format!("{}{path}", app.base_url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(header(&r, "content-type"), content_type, "{path}");
        assert_eq!(header(&r, "cache-control"), "no-cache", "{path}");
        assert_locked_down(&r, path);
        // Revalidation costs a 304.
        let etag = header(&r, "etag").to_owned();
        assert!(etag.starts_with('"'), "{path}: {etag:?}");
        let again = http.get(format!("{}{path}", app.base_url)).header("if-none-match", &etag).send().await.unwrap();
        assert_eq!(again.status(), 304, "{path}");
        assert_locked_down(&again, path);
    }

    // Every module the app imports is served as JavaScript: none was left
    // out of the binary.
    let mut modules = vec!["app.js".to_owned()];
    let mut seen = std::collections::BTreeSet::new();
    while let Some(module) = modules.pop() {
        if !seen.insert(module.clone()) {
            continue;
        }
        let r = http.get(format!("{}/console/js/{module}", app.base_url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{module}");
        assert_eq!(header(&r, "content-type"), "text/javascript; charset=utf-8", "{module}");
        let text = r.text().await.unwrap();
        assert!(!text.contains("innerHTML") && !text.contains("insertAdjacentHTML"), "{module} writes markup");
        for import in text.split("from \"./").skip(1) {
            modules.push(import.split('"').next().unwrap().to_owned());
        }
    }
    assert!(seen.len() >= 5, "{seen:?}");

    // The shell has no inline script or style for the policy to refuse.
    let html = http.get(format!("{}/console", app.base_url)).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("<script type=\"module\" src=\"/console/js/app.js\"></script>"), "{html}");
    assert!(!html.contains("<style") && !html.contains("style=") && !html.contains("onclick"), "{html}");

    // Unknown files and other methods: answered, under the same policy.
    let missing = http.get(format!("{}/console/nope.js", app.base_url)).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_locked_down(&missing, "404");
    let post = http.post(format!("{}/console", app.base_url)).send().await.unwrap();
    assert_eq!(post.status(), 405);
    assert_locked_down(&post, "405");
    // A path that only starts like the console is not one: the key applies.
    let other = http.get(format!("{}/consoles", app.base_url)).send().await.unwrap();
    assert_eq!(other.status(), 401);

    // The data the console shows still needs the key.
    let (status, _) = app.get_json_as("/v1/webhook-logs", None).await;
    assert_eq!(status, 401);
    let (status, _) = app.get_json("/v1/webhook-logs").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_browser_asking_for_gzip_gets_the_live_tail_uncompressed() {
    // Compressed, the NDJSON stream's small events wait in the encoder's
    // buffer, so a browser would not see them as they happen.
    let app = spawn_app().await;
    let r = reqwest::Client::new()
        .get(format!("{}/v1/webhook-logs:watch?organizationId={}", app.base_url, Uuid::new_v4()))
        .bearer_auth(&app.key)
        .header("accept-encoding", "gzip, deflate, br")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "application/x-ndjson");
    assert_eq!(header(&r, "content-encoding"), "");
}
