//! A1111's listing and housekeeping endpoints that clients call on start-up, answered with what is true here:
//! the LoRA and embeddings folders (read per request, so refreshing has nothing to reload), and no separate
//! VAEs, upscalers, face restorers or styles (the models are loaded once, at start).

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use diffuse::loaders::embeddings::Embedding;
use diffuse::loaders::lora::LoraFile;
use diffuse::loaders::named_files::NamedFiles;

use crate::api::SharedState;
use crate::error::ApiError;

/// `GET /sdapi/v1/sd-vae`, `/upscalers`, `/face-restorers`, `/realesrgan-models` and `/prompt-styles`: none
/// are served.
pub async fn empty_list() -> Json<Value> {
    Json(json!([]))
}

/// `GET /sdapi/v1/loras`: the LoRAs in the server's LoRA folder, as A1111 lists them (`name` is what a
/// `<lora:NAME:W>` tag names; `metadata` is the file's safetensors metadata). The folder is read on each call,
/// so files added since start are listed (and usable) without a refresh.
pub async fn loras(State(state): State<SharedState>) -> Result<Json<Value>, ApiError> {
    let Some(dir) = state.lora_dir.clone() else {
        return Ok(Json(json!([])));
    };
    let listed = crate::api::uploads::off_runtime(move || {
        let listing = NamedFiles::scan(&dir).map_err(ApiError::from)?;
        Ok(listing
            .entries()
            .map(|(name, path)| {
                let metadata = LoraFile::open(path)
                    .map(|f| json!(f.metadata()))
                    .unwrap_or_else(|e| json!({"error": e.to_string()}));
                // The path inside the LoRA folder: the server's own paths are not shown.
                let path = path.strip_prefix(listing.root()).unwrap_or(path);
                json!({"name": name, "alias": name, "path": path, "metadata": metadata})
            })
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(Json(Value::Array(listed)))
}

/// `GET /sdapi/v1/embeddings`: the embeddings folder as A1111 lists it: `loaded` (those that fit the default
/// model's text encoders, with their width and vector count) and `skipped` (the others, with the reason).
pub async fn embeddings(State(state): State<SharedState>) -> Result<Json<Value>, ApiError> {
    let (Some(dir), Some(model)) = (
        state.embeddings_dir.clone(),
        state.registry.all().first().cloned(),
    ) else {
        return Ok(Json(json!({"loaded": {}, "skipped": {}})));
    };
    crate::api::uploads::off_runtime(move || {
        let listing = NamedFiles::scan(&dir).map_err(ApiError::from)?;
        let (mut loaded, mut skipped) = (serde_json::Map::new(), serde_json::Map::new());
        for (name, path) in listing.entries() {
            let opened = Embedding::open(path, Some(name));
            let fits = |e: &Embedding| match &model.pipeline {
                crate::registry::Pipeline::Image(pipeline) => pipeline.check_embedding(e),
                crate::registry::Pipeline::Audio(_) => Err(diffuse::Error::invalid(
                    "embedding",
                    "the default model is an audio model, which takes no embeddings",
                )),
            };
            match opened.and_then(|e| fits(&e).map(|()| e)) {
                Ok(e) => {
                    let width = e
                        .first
                        .as_ref()
                        .or(e.second.as_ref())
                        .and_then(|t| t.dims().get(1).copied());
                    loaded.insert(
                        name.to_string(),
                        json!({"step": null, "sd_checkpoint": null, "sd_checkpoint_name": null,
                               "shape": width, "vectors": e.vectors()}),
                    );
                }
                Err(e) => {
                    // The reason, without the server's own paths.
                    let reason = e.to_string().replace(&dir.display().to_string(), "");
                    skipped.insert(name.to_string(), json!({"error": reason}));
                }
            }
        }
        Ok(Json(json!({"loaded": loaded, "skipped": skipped})))
    })
    .await
}

/// `POST /sdapi/v1/refresh-checkpoints`, `/refresh-vae`, `/refresh-embeddings`, `/refresh-loras`: nothing to
/// reload; answers `null`, as A1111 does.
pub async fn refresh() -> Json<Value> {
    Json(Value::Null)
}

/// `GET /internal/ping`: `{}`.
pub async fn ping() -> Json<Value> {
    Json(json!({}))
}

/// `GET /sdapi/v1/memory`: the machine's RAM in bytes (from `/proc/meminfo` where there is one); `cuda` says
/// what A1111 says without a GPU.
pub async fn memory() -> Json<Value> {
    let ram = match diffuse::device::host_memory() {
        Some(memory) => json!({
            "free": memory.available,
            "used": memory.total.saturating_sub(memory.available),
            "total": memory.total,
        }),
        None => json!({"error": "unavailable"}),
    };
    Json(json!({"ram": ram, "cuda": {"error": "unavailable"}}))
}

/// `GET /sdapi/v1/cmd-flags`: the A1111 flags that describe this server.
pub async fn cmd_flags(State(state): State<SharedState>) -> Json<Value> {
    Json(json!({
        "api": true,
        "nowebui": false,
        "api_auth": state.api_key.is_some(),
        "ckpt": state.registry.all().first().map(|m| m.name.clone()),
    }))
}
