//! Jobs through Redis Streams, for several servers and worker processes behind one API.
//!
//! Each served model has a stream that servers append job ids to and a consumer group of workers reads. A job's
//! request, state, progress and result live in Redis hashes that expire `result_ttl` after the job ends, so any
//! server can answer for any job. A worker that stops without acknowledging its job (and without heartbeats for
//! `claim_after`) loses it to another worker, which runs it again from the start with the same seed; the result
//! is written once, by a script that refuses a second write. See [`keys`] for the layout.

pub mod client;
pub(crate) mod keys;
mod scripts;
pub mod stored;
pub mod wire;
pub mod worker;

use std::time::Duration;

use crate::error::{ApiError, ServerError};

/// Where the broker is and how jobs are delivered.
#[derive(Clone)]
pub struct BrokerConfig {
    /// `redis://[:PASSWORD@]HOST:PORT[/DB]`.
    pub url: String,
    /// How long a job's state and result are kept after it ends.
    pub result_ttl: Duration,
    /// A job whose worker sent no heartbeat for this long is given to another worker.
    pub claim_after: Duration,
    /// Deliveries after which a job whose workers all stopped fails instead of running again.
    pub max_attempts: u32,
}

impl std::fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("url", &self.redacted_url())
            .field("result_ttl", &self.result_ttl)
            .field("claim_after", &self.claim_after)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

impl BrokerConfig {
    /// `url` with the defaults: results kept 24 h, claims after 30 s, 3 attempts.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            result_ttl: Duration::from_secs(24 * 3600),
            claim_after: Duration::from_secs(30),
            max_attempts: 3,
        }
    }

    /// The URL with its password replaced by `***`, for logs and messages.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }

    /// Checks the URL and the numbers; the message names the option.
    pub fn validate(&self) -> Result<(), ServerError> {
        let scheme_ok = self.url.starts_with("redis://") || self.url.starts_with("rediss://");
        if !scheme_ok {
            return Err(ServerError::Config(format!(
                "--broker {}: expected redis://[:PASSWORD@]HOST:PORT[/DB]",
                self.redacted_url()
            )));
        }
        redis::Client::open(self.url.as_str())
            .map_err(|e| ServerError::Config(format!("--broker {}: {e}", self.redacted_url())))?;
        if self.max_attempts == 0 {
            return Err(ServerError::Config(
                "--max-attempts: must be at least 1".into(),
            ));
        }
        if self.claim_after < Duration::from_secs(1) {
            return Err(ServerError::Config(
                "--claim-after: must be at least 1 second".into(),
            ));
        }
        if self.result_ttl < Duration::from_secs(1) {
            return Err(ServerError::Config(
                "--result-ttl: must be at least 1 second".into(),
            ));
        }
        Ok(())
    }

    /// A Redis client for the URL (connecting is left to the caller).
    pub(crate) fn client(&self) -> Result<redis::Client, redis::RedisError> {
        redis::Client::open(self.url.as_str())
    }

    /// How often a worker renews its claim on a running job and announces itself.
    pub(crate) fn heartbeat_every(&self) -> Duration {
        (self.claim_after / 4).max(Duration::from_millis(250))
    }
}

/// `url` without its password.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map(|(u, _)| u).unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

/// The API's answer when the broker cannot be reached or fails a command: 503 with a retry hint, naming the
/// broker (never its password).
pub(crate) fn unreachable(config: &BrokerConfig, error: &redis::RedisError) -> ApiError {
    let what = if error.is_io_error() || error.is_timeout() || error.is_connection_dropped() {
        "cannot be reached"
    } else {
        "failed"
    };
    ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "the job broker at {} {what} ({}); retry later",
            config.redacted_url(),
            describe(error)
        ),
    )
    .with_retry_after(5)
}

/// A Redis error as one line, without any URL it might carry.
pub(crate) fn describe(error: &redis::RedisError) -> String {
    let text = error.to_string();
    text.split_whitespace()
        .map(|word| {
            if word.contains("://") {
                redact(word)
            } else {
                word.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let config = BrokerConfig::new("redis://:s3cret@cache:6380/2");
        assert_eq!(config.redacted_url(), "redis://:***@cache:6380/2");
        assert!(!format!("{config:?}").contains("s3cret"));
        assert_eq!(
            redact("redis://user:pw@h:1/0"),
            "redis://user:***@h:1/0".to_string()
        );
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn bad_settings_name_their_option() {
        let bad = |config: BrokerConfig| config.validate().unwrap_err().to_string();
        assert!(bad(BrokerConfig::new("http://x")).starts_with("--broker http://x"));
        let mut config = BrokerConfig::new("redis://127.0.0.1:1");
        config.max_attempts = 0;
        assert!(bad(config).starts_with("--max-attempts"));
        let mut config = BrokerConfig::new("redis://127.0.0.1:1");
        config.claim_after = Duration::from_millis(10);
        assert!(bad(config).starts_with("--claim-after"));
    }
}
