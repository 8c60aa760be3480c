//! `diffuse serve`: starts, prints its address, answers, stops cleanly on SIGTERM; refuses bad setups by name;
//! its PNGs replay with `diffuse generate --replay`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

fn sd1() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/sd1")
}

fn get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// POSTs a JSON body; returns the response's JSON body.
fn post_json(addr: &str, path: &str, body: &serde_json::Value) -> serde_json::Value {
    let body = body.to_string();
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let (_, json) = response.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(json).unwrap()
}

/// Starts `diffuse serve ARGS --port 0` (without `DIFFUSE_MODEL`) and reads the address it prints.
fn start(args: &[String]) -> (std::process::Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_diffuse"))
        .arg("serve")
        .args(args)
        .args(["--port", "0"])
        .env_remove("DIFFUSE_API_KEY")
        .env_remove("DIFFUSE_MODEL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("diffuse serve: listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (child, addr)
}

fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    child.wait().unwrap()
}

#[test]
fn without_a_model_it_serves_the_bundled_one() {
    let (mut child, addr) = start(&[]);
    let health = get(&addr, "/health");
    assert!(health.contains(r#""models":["diffuse-tiny"]"#), "{health}");
    assert!(terminate(&mut child).success());
}

#[test]
fn serve_answers_and_stops_cleanly_on_sigterm() {
    let (mut child, addr) = start(&["--model".into(), format!("tiny={}", sd1().display())]);
    let health = get(&addr, "/health");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains(r#""models":["tiny"]"#), "{health}");
    let status = terminate(&mut child);
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn serve_refuses_bad_setups_naming_the_option() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["serve", "--model", "/nonexistent/model"],
            "/nonexistent/model",
        ),
        (
            &["serve", "--model", "x=/tmp", "--host", "0.0.0.0"],
            "--api-key",
        ),
        (
            &["serve", "--preview-decoder", "/nonexistent/taesd"],
            "--preview-decoder",
        ),
        (&["serve", "--quantize", "int4"], "--quantize"),
    ];
    for (args, expected) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_diffuse"))
            .args(args)
            .env_remove("DIFFUSE_MODEL")
            .env_remove("DIFFUSE_API_KEY")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{args:?}: {err}");
        assert_eq!(
            err.matches(expected).count(),
            1,
            "the cause is printed once: {err}"
        );
    }
}

#[test]
fn every_image_of_a_served_batch_replays_to_itself() {
    let served = served_images_replay(&[], "plain");
    std::fs::remove_dir_all(served[0].parent().unwrap()).ok();
}

/// A server started with `--quantize int8` runs its UNets in int8: its images say so and replay to themselves.
#[test]
fn a_quantized_servers_images_say_so_and_replay() {
    if !diffuse::internals::kernels::int8_gemm::available() {
        eprintln!("skipped: this CPU has no AVX512-VNNI");
        return;
    }
    let served = served_images_replay(&["--quantize", "int8"], "int8");
    for image in &served {
        let info = Command::new(env!("CARGO_BIN_EXE_diffuse"))
            .arg("info")
            .arg(image)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&info.stdout).contains("Quantization: int8"));
    }
    std::fs::remove_dir_all(served[0].parent().unwrap()).ok();
}

/// Serves a batch of two with `extra` flags, and checks that `generate --replay` redraws each image; returns the
/// served images' paths (in a scratch folder named after `label`).
fn served_images_replay(extra: &[&str], label: &str) -> Vec<std::path::PathBuf> {
    use base64::Engine;
    let mut args = vec!["--model".into(), format!("sd1={}", sd1().display())];
    args.extend(extra.iter().map(|a| a.to_string()));
    let (mut child, addr) = start(&args);
    let body = post_json(
        &addr,
        "/v1/images/generations",
        &serde_json::json!({"prompt": "a red cube", "n": 2, "steps": 3, "seed": 11,
                            "response_format": "b64_json"}),
    );
    assert!(terminate(&mut child).success());
    let scratch = std::env::temp_dir().join(format!(
        "diffuse-serve-replay-{label}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&scratch).unwrap();
    let images = body["data"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    let mut served_paths = Vec::new();
    for (i, image) in images.iter().enumerate() {
        let served = scratch.join(format!("served-{i}.png"));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(image["b64_json"].as_str().unwrap())
            .unwrap();
        std::fs::write(&served, bytes).unwrap();
        let replayed = scratch.join(format!("replayed-{i}.png"));
        let out = Command::new(env!("CARGO_BIN_EXE_diffuse"))
            .args(["generate", "--quiet", "--model"])
            .arg(sd1())
            .arg("--replay")
            .arg(&served)
            .arg("-o")
            .arg(&replayed)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let open = |p: &std::path::Path| diffuse::pipelines::RgbImage::open(p, "image").unwrap();
        assert_eq!(
            open(&replayed),
            open(&served),
            "image {i} replays to another image"
        );
        served_paths.push(served);
    }
    served_paths
}

#[test]
fn serve_help_says_what_model_takes() {
    let out = Command::new(env!("CARGO_BIN_EXE_diffuse"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for part in [
        "a diffusers folder",
        "a Hub id",
        "single `.safetensors` checkpoint",
        "--openai-model-alias",
    ] {
        assert!(help.contains(part), "`{part}` missing from:\n{help}");
    }
}
