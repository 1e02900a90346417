//! `/api/docs`: Swagger UI over `/api/openapi.json`, served from assets embedded at build
//! time (no CDN). When the build had no assets, a plain page says how to get them.

use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};

use crate::extract::ApiPath;

mod assets {
    include!(concat!(env!("OUT_DIR"), "/swagger_assets.rs"));
}

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Postern API</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/api/docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/api/docs/swagger-ui-bundle.js"></script>
<script src="/api/docs/init.js"></script>
</body>
</html>
"#;

const INIT: &str = r##"window.ui = SwaggerUIBundle({ url: "/api/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
"##;

const MISSING: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Postern API</title></head>
<body>
<h1>Postern API</h1>
<p>This build has no Swagger UI assets: run <code>npm ci</code> at the repository root and rebuild.</p>
<p>The OpenAPI document is at <a href="/api/openapi.json">/api/openapi.json</a>.</p>
</body></html>
"#;

/// Whether this binary carries Swagger UI.
pub fn embedded() -> bool {
    assets::BUNDLE.is_some() && assets::CSS.is_some()
}

/// The content security policy of the docs: scripts from this origin only (the bundle
/// and `init.js`, no inline script, no eval), fetches to this origin only (the document
/// and "Try it out"), never framed. Styles may be inline: Swagger UI sets some.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                      img-src 'self' data:; connect-src 'self'; font-src 'self'; \
                      form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Middleware on every `/api/docs` response: the policy above, no framing (the page
/// sends requests with the visitor's token, so it must not be clickjacked), no sniffing,
/// no referrer.
pub async fn headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

pub async fn index() -> Html<&'static str> {
    Html(if embedded() { PAGE } else { MISSING })
}

pub async fn asset(ApiPath(file): ApiPath<String>) -> Response {
    let (body, kind): (Option<&'static [u8]>, &'static str) = match file.as_str() {
        "swagger-ui-bundle.js" => (assets::BUNDLE, "text/javascript; charset=utf-8"),
        "swagger-ui.css" => (assets::CSS, "text/css; charset=utf-8"),
        "init.js" => (Some(INIT.as_bytes()), "text/javascript; charset=utf-8"),
        _ => (None, ""),
    };
    match body {
        Some(bytes) => {
            let mut response = bytes.into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=86400"),
            );
            response
        }
        None => crate::error::ApiError::NotFound("asset").into_response(),
    }
}
