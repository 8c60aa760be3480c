//! A job as its Redis hash holds it: the fields, and their conversion from and to the server's types.
//!
//! Hash fields: `model`, `prompt`, `spec` (the [`WireJob`](super::wire::WireJob) JSON), `state`, `step`,
//! `total_steps`, `created_at`, `started_at`, `finished_at`, `error` (JSON, empty when none), `outputs` (JSON
//! list of [`OutputMeta`]), `stream_id`, `attempt`, `worker`, `preview_seq`.

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::jobs::job::{ImageOutput, JobState};

/// The hash fields [`StoredJob::from_fields`] reads, in its order.
pub const STATUS_FIELDS: [&str; 11] = [
    "model",
    "prompt",
    "state",
    "step",
    "total_steps",
    "created_at",
    "started_at",
    "finished_at",
    "error",
    "outputs",
    "preview_seq",
];

/// What an output is, besides its bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputMeta {
    /// The seed its noise was drawn with.
    pub seed: u64,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// A1111's parameters text.
    pub infotext: String,
    /// Whether a WAV goes with it.
    pub wav: bool,
}

/// A job's status as stored.
#[derive(Debug, Clone)]
pub struct StoredJob {
    /// The model's name.
    pub model: String,
    /// The prompt.
    pub prompt: String,
    /// Where it stands.
    pub state: JobState,
    /// Steps done.
    pub step: usize,
    /// Steps in all.
    pub total_steps: usize,
    /// Unix seconds of submission.
    pub created_at: f64,
    /// Unix seconds its current attempt started.
    pub started_at: Option<f64>,
    /// Unix seconds it ended.
    pub finished_at: Option<f64>,
    /// Why it failed or was cancelled.
    pub error: Option<ApiError>,
    /// Its outputs, once it succeeded.
    pub outputs: Vec<OutputMeta>,
    /// Bumped on every new preview.
    pub preview_seq: u64,
}

impl StoredJob {
    /// Reads the values of [`STATUS_FIELDS`]; `None` when the hash does not exist (or is not a job's).
    pub fn from_fields(values: Vec<Option<String>>) -> Option<Self> {
        let mut v = values.into_iter();
        let mut next = || v.next().flatten();
        let model = next()?;
        let prompt = next().unwrap_or_default();
        let state = parse_state(&next()?)?;
        let number = |s: Option<String>| s.and_then(|s| s.parse::<f64>().ok());
        let step = number(next()).unwrap_or(0.0) as usize;
        let total_steps = number(next()).unwrap_or(0.0) as usize;
        let created_at = number(next()).unwrap_or(0.0);
        let started_at = number(next());
        let finished_at = number(next());
        let error = next()
            .filter(|e| !e.is_empty())
            .and_then(|e| error_from_json(&e));
        let outputs = next()
            .filter(|o| !o.is_empty())
            .and_then(|o| serde_json::from_str(&o).ok())
            .unwrap_or_default();
        let preview_seq = number(next()).unwrap_or(0.0) as u64;
        Some(Self {
            model,
            prompt,
            state,
            step,
            total_steps,
            created_at,
            started_at,
            finished_at,
            error,
            outputs,
            preview_seq,
        })
    }
}

fn parse_state(text: &str) -> Option<JobState> {
    Some(match text {
        "queued" => JobState::Queued,
        "running" => JobState::Running,
        "succeeded" => JobState::Succeeded,
        "failed" => JobState::Failed,
        "cancelled" => JobState::Cancelled,
        _ => return None,
    })
}

#[derive(Serialize, Deserialize)]
struct StoredError {
    status: u16,
    message: String,
    param: Option<String>,
    retry_after: Option<u64>,
}

/// An error as stored.
pub fn error_json(error: &ApiError) -> String {
    serde_json::to_string(&StoredError {
        status: error.status.as_u16(),
        message: error.message.clone(),
        param: error.param.clone(),
        retry_after: error.retry_after,
    })
    .unwrap_or_default()
}

fn error_from_json(text: &str) -> Option<ApiError> {
    let stored: StoredError = serde_json::from_str(text).ok()?;
    Some(ApiError {
        status: StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        message: stored.message,
        param: stored.param,
        retry_after: stored.retry_after,
    })
}

/// The outputs' metadata as stored.
pub fn outputs_json(outputs: &[ImageOutput]) -> String {
    let meta: Vec<OutputMeta> = outputs
        .iter()
        .map(|o| OutputMeta {
            seed: o.seed,
            width: o.width,
            height: o.height,
            infotext: o.infotext.clone(),
            wav: o.wav.is_some(),
        })
        .collect();
    serde_json::to_string(&meta).unwrap_or_default()
}

/// The result hash's field of output `index`'s PNG.
pub fn png_field(index: usize) -> String {
    format!("png:{index}")
}

/// The result hash's field of output `index`'s WAV.
pub fn wav_field(index: usize) -> String {
    format!("wav:{index}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_and_outputs_round_trip() {
        let error = ApiError::bad_field("steps", "too many").with_retry_after(3);
        let back = error_from_json(&error_json(&error)).unwrap();
        assert_eq!(back.status, StatusCode::BAD_REQUEST);
        assert_eq!(back.message, "too many");
        assert_eq!(back.param.as_deref(), Some("steps"));
        assert_eq!(back.retry_after, Some(3));
        let fields = [
            Some("m"),
            Some("p"),
            Some("succeeded"),
            Some("4"),
            Some("4"),
            Some("1.5"),
            None,
            Some("2.5"),
            Some(""),
            Some(r#"[{"seed":7,"width":8,"height":8,"infotext":"x","wav":false}]"#),
            None,
        ];
        let job =
            StoredJob::from_fields(fields.iter().map(|f| f.map(String::from)).collect()).unwrap();
        assert_eq!(job.state, JobState::Succeeded);
        assert_eq!(job.outputs[0].seed, 7);
        assert_eq!(job.finished_at, Some(2.5));
        assert!(job.error.is_none());
        assert!(StoredJob::from_fields(vec![None; 11]).is_none());
    }
}
