//! Catching a generation that diverged: NaN or infinity in the latents or the decoded image would otherwise
//! come out as an all-black image that reports success.

use candle_core::{DType, Tensor};

use super::request::GenerationRequest;
use crate::{Error, Result};

/// Guidance scales above this are far outside what models are trained for (diffusers' examples use 1–20).
const LARGE_GUIDANCE: f64 = 100.0;
/// DDIM's η above this draws far more noise than the schedule removes (1 is DDPM's amount).
const LARGE_ETA: f64 = 10.0;

/// Fails with [`Error::NonFinite`] if `tensor` holds NaN or infinity; `stage` says where it was taken.
pub(crate) fn ensure_finite(
    tensor: &Tensor,
    stage: impl FnOnce() -> String,
    req: &GenerationRequest,
    dtype: DType,
) -> Result<()> {
    let sum = tensor.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    if sum.is_finite() {
        return Ok(());
    }
    Err(Error::NonFinite {
        stage: stage(),
        likely_cause: likely_cause(req, dtype),
    })
}

/// The request value or setting that most likely made the numbers overflow.
fn likely_cause(req: &GenerationRequest, dtype: DType) -> String {
    if req.guidance_scale > LARGE_GUIDANCE {
        format!(
            "guidance_scale {} is far above the usual 1 to 20; lower it",
            short(req.guidance_scale)
        )
    } else if req.eta > LARGE_ETA {
        format!(
            "eta {} is far above 1 (DDPM's amount of noise); lower it",
            short(req.eta)
        )
    } else if matches!(dtype, DType::F16) {
        "float16 overflowed (the SDXL VAE does in float16); run in bfloat16 or float32".into()
    } else {
        "the model's weights or the scheduler settings; check them against the model's own".into()
    }
}

/// `x` as people write it: 7.5, 1e308.
fn short(x: f64) -> String {
    if x.abs() >= 1e6 {
        format!("{x:e}")
    } else {
        x.to_string()
    }
}
