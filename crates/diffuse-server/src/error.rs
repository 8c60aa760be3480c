//! Errors: what the server answers when a request fails, and why the server itself could not start.
//!
//! Every failed request gets a JSON body in the OpenAI layout, whatever the endpoint:
//! `{"error": {"message": "...", "type": "invalid_request_error", "param": "steps", "code": null}}`,
//! `param` naming the field at fault when there is one.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// A request that failed: the HTTP status, a message for people, and the field at fault.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, naming the value at fault.
    pub message: String,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// Seconds after which a retry may succeed (429 and 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A 400 for field `param`.
    pub fn bad_field(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message).with_param(param)
    }

    /// A 400 not tied to one field.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// A 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// A 500: a fault of the server, not of the request.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// Any status with a message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
            retry_after: None,
        }
    }

    /// The same error, naming field `param`.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// The same error, with a `Retry-After` of `seconds`.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }
}

impl From<diffuse::Error> for ApiError {
    /// Input problems the library found become 400s naming the field; everything else is the server's fault.
    fn from(e: diffuse::Error) -> Self {
        match &e {
            diffuse::Error::InvalidArgument { name, .. } => {
                ApiError::bad_field(name.clone(), e.to_string())
            }
            diffuse::Error::Unsupported { key, .. } => {
                ApiError::bad_field(key.clone(), e.to_string())
            }
            // The request ran but its numbers overflowed: the client's settings, not the server, are at fault.
            diffuse::Error::NonFinite { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
            }
            diffuse::Error::Cancelled => {
                ApiError::new(StatusCode::CONFLICT, "the job was cancelled")
            }
            _ => ApiError::internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {
                "message": self.message,
                "type": self.kind(),
                "param": self.param,
                "code": null,
            }
        });
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is inconsistent (names the option).
    #[error("{0}")]
    Config(String),
    /// A model could not be loaded (the cause is the error's source, printed once by `{:#}`).
    #[error("model `{name}` could not be loaded")]
    Load {
        /// The model's name.
        name: String,
        /// What the library said.
        source: Box<diffuse::Error>,
    },
    /// The address could not be bound or served (the cause is the error's source).
    #[error("cannot serve on {addr}")]
    Io {
        /// The address.
        addr: String,
        /// What the operating system said.
        source: std::io::Error,
    },
}
