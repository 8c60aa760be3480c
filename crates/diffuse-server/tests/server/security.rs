//! Security and limits: the API key, loopback-only without a key, body and image limits, model names,
//! and JSON errors for everything axum itself answers.

use crate::common::{assert_error, b64, config, start, start_with, test_png};
use diffuse_server::{ModelSpec, Server, ServerError};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn the_api_key_guards_every_api_route_but_not_the_page_or_health() {
    let mut cfg = config();
    cfg.api_key = Some("s3cret".into());
    let t = start_with(cfg).await;
    let guarded = [
        ("POST", "/v1/images/generations"),
        ("POST", "/v1/images/edits"),
        ("GET", "/v1/models"),
        ("GET", "/v1/schedulers"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs/job-x"),
        ("DELETE", "/v1/jobs/job-x"),
        ("GET", "/v1/jobs/job-x/events"),
        ("GET", "/v1/jobs/job-x/images/0.png"),
        ("POST", "/sdapi/v1/txt2img"),
        ("POST", "/sdapi/v1/img2img"),
        ("GET", "/sdapi/v1/samplers"),
        ("GET", "/sdapi/v1/sd-models"),
        ("GET", "/sdapi/v1/progress"),
        ("POST", "/sdapi/v1/interrupt"),
        ("GET", "/metrics"),
    ];
    for (method, path) in guarded {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Bearer s3cre"),
            Some("Basic czNjcmV0"),
        ] {
            let mut request = t
                .client
                .request(method.parse().unwrap(), t.url(path))
                .json(&json!({"prompt": "x", "steps": 1}));
            if let Some(auth) = auth {
                request = request.header("authorization", auth);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{method} {path} with {auth:?}");
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["type"], "authentication_error");
        }
    }
    // The scheme is case-insensitive, as RFC 9110 has it.
    for auth in ["Bearer s3cret", "bearer s3cret", "BEARER  s3cret"] {
        let response = t
            .client
            .get(t.url("/v1/models"))
            .header("authorization", auth)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{auth}");
    }
    for path in ["/", "/app.js", "/style.css", "/favicon.svg", "/health"] {
        let response = t.client.get(t.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn other_addresses_need_a_key_and_bad_configurations_are_named() {
    let mut cfg = config();
    cfg.addr = "0.0.0.0:0".parse().unwrap();
    let err = Server::start(cfg).await.err().unwrap().to_string();
    assert!(
        err.contains("--host 0.0.0.0") && err.contains("--api-key"),
        "{err}"
    );

    let mut cfg = config();
    cfg.models.push(cfg.models[0].clone());
    let err = Server::start(cfg).await.err().unwrap().to_string();
    assert!(err.contains("two models are named"), "{err}");

    let mut cfg = config();
    cfg.models = vec![ModelSpec {
        name: "missing".into(),
        path: "/nonexistent/model".into(),
    }];
    let err = Server::start(cfg).await.err().unwrap();
    assert!(matches!(err, ServerError::Load { .. }), "{err}");
    // The cause is the error's source, so a chain printer shows it once.
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(cause.contains("/nonexistent/model"), "{cause}");
    assert!(!err.to_string().contains("/nonexistent/model"), "{err}");

    let err = ModelSpec::parse("bad name=/x").unwrap_err().to_string();
    assert!(err.contains("\"bad name\""), "{err}");
    assert_eq!(ModelSpec::parse("/models/sd-1.5").unwrap().name, "sd-1.5");
    assert_eq!(ModelSpec::parse("mine=/models/x").unwrap().name, "mine");
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_are_enforced_with_errors_naming_the_field() {
    let mut cfg = config();
    cfg.limits.max_body_bytes = 64 << 10;
    cfg.limits.max_input_side = 256;
    let t = start_with(cfg).await;
    let big = "a".repeat(100 << 10);
    let response = t
        .client
        .post(t.url("/v1/images/generations"))
        .json(&json!({"prompt": big}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].as_str().is_some());

    let huge = b64(&test_png(300, 8, None));
    let (status, body) = t
        .post("/v1/jobs", &json!({"prompt": "x", "image": huge}))
        .await;
    assert_error(status, &body, 400, Some("image"));
    assert!(body["error"]["message"].as_str().unwrap().contains("300×8"));
    let (status, body) = t
        .post(
            "/sdapi/v1/img2img",
            &json!({"prompt": "x", "init_images": [huge], "width": 64, "height": 64}),
        )
        .await;
    assert_error(status, &body, 400, Some("init_images"));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn axum_level_errors_are_json_too() {
    let t = start().await;
    let (status, body) = t.get("/no/such/path").await;
    assert_error(status, &body, 404, None);
    let response = t.client.put(t.url("/v1/models")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert!(response.headers().contains_key("allow"));
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].as_str().is_some());
    let (status, body) = t.get("/sdapi/v1/progress?skip_current_image=perhaps").await;
    assert_error(status, &body, 400, None);
    let response = t
        .client
        .post(t.url("/v1/images/edits"))
        .header("content-type", "multipart/form-data; boundary=X")
        .body("--X\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nunterminated")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error());
    let _: Value = response.json().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_and_its_assets_are_served() {
    let t = start().await;
    let page = t.client.get(t.url("/")).send().await.unwrap();
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    for id in [
        "id=\"prompt\"",
        "id=\"generate\"",
        "id=\"gallery\"",
        "id=\"mask-canvas\"",
        "/app.js",
    ] {
        assert!(html.contains(id), "{id}");
    }
    let script = t.client.get(t.url("/app.js")).send().await.unwrap();
    assert!(script.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert!(script.text().await.unwrap().contains("/v1/jobs"));
    let (status, health) = t.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["models"], json!(["sd1"]));
    t.stop().await;
}
