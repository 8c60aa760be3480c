//! Shared test harness: a server on 127.0.0.1:0 serving the tiny SD 1.x fixture, a client, and image helpers.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use diffuse::pipelines::images::png_parameters;
use diffuse::pipelines::RgbImage;
use diffuse_server::{ModelSpec, Server, ServerConfig};
use serde_json::Value;

/// The tiny SD 1.x pipeline folder (64×64 default size).
pub fn sd1() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/models/sd1"
    ))
}

/// A running test server and a client for it.
pub struct TestServer {
    /// The server (taken by [`TestServer::stop`]).
    pub server: Option<Server>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// A client with a generous timeout.
    pub client: reqwest::Client,
}

/// A1111's short model hash of a fixture folder, as the server records it.
pub fn hash_of(folder: &std::path::Path) -> String {
    diffuse::loaders::hash::model_hash(&diffuse::loaders::PipelineFolder::open(folder).unwrap())
        .unwrap()
}

/// A1111's short model hash of the sd1 fixture.
pub fn sd1_hash() -> String {
    hash_of(&sd1())
}

/// The default test configuration: sd1 as `sd1`, loopback, port 0.
pub fn config() -> ServerConfig {
    let mut config = ServerConfig::new(vec![ModelSpec {
        name: "sd1".into(),
        path: sd1(),
    }]);
    config.addr = "127.0.0.1:0".parse().unwrap();
    config.shutdown_grace = Duration::from_secs(5);
    config
}

/// Starts a server with `config`.
pub async fn start_with(config: ServerConfig) -> TestServer {
    let server = Server::start(config).await.expect("server starts");
    let base = format!("http://{}", server.local_addr());
    TestServer {
        server: Some(server),
        base,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap(),
    }
}

/// Starts a server with the default test configuration.
pub async fn start() -> TestServer {
    start_with(config()).await
}

impl TestServer {
    /// The absolute URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs JSON, returning the status and the JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// GETs JSON.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Polls `GET /v1/jobs/{id}` until `done` holds (at most 60 s).
    pub async fn wait_job(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..6000 {
            let (_, job) = self.get(&format!("/v1/jobs/{id}")).await;
            if done(&job) {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("job {id} did not reach the expected state");
    }

    /// Shuts the server down gracefully.
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("clean shutdown");
        }
    }
}

/// Decodes a base64 PNG into its pixels and its `parameters` text.
pub fn decode_png_b64(text: &str) -> (RgbImage, Option<String>) {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap();
    decode_png(&bytes)
}

/// Decodes PNG bytes into pixels and the `parameters` text.
pub fn decode_png(bytes: &[u8]) -> (RgbImage, Option<String>) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    (
        RgbImage::decode(bytes, "test").unwrap(),
        png_parameters(bytes).unwrap(),
    )
}

/// A `w`×`h` PNG: a colour gradient, with alpha from `alpha(x, y)` when given.
pub fn test_png(w: u32, h: u32, alpha: Option<&dyn Fn(u32, u32) -> u8>) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    match alpha {
        Some(alpha) => image::RgbaImage::from_fn(w, h, |x, y| {
            image::Rgba([(x * 4) as u8, (y * 4) as u8, 128, alpha(x, y)])
        })
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap(),
        None => {
            image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 128]))
                .write_to(&mut out, image::ImageFormat::Png)
                .unwrap()
        }
    }
    out.into_inner()
}

/// Base64 of `bytes`.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Asserts the error layout: status, a message, and the field named.
pub fn assert_error(status: u16, body: &Value, want_status: u16, want_param: Option<&str>) {
    assert_eq!(status, want_status, "{body}");
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    if let Some(param) = want_param {
        assert_eq!(error["param"], param, "{body}");
    }
}
