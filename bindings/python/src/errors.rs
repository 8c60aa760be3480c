//! The library's errors as the Python exceptions diffusers users catch, carrying the library's message with
//! diffusers' argument names.

use diffuse::pipelines::RequestField;
use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::PyErr;

/// `FileNotFoundError` for a missing file, `OSError` for other I/O failures, `ValueError` for bad arguments,
/// configurations, weights and pickles, `RuntimeError` for the rest.
/// diffusers' argument name for a request field, where it differs from the library's.
fn argument_name(field: RequestField) -> Option<&'static str> {
    match field {
        RequestField::Steps => Some("num_inference_steps"),
        RequestField::GuidanceScale => Some("guidance_scale"),
        RequestField::NumImages => Some("num_images_per_prompt"),
        RequestField::Size => Some("height/width"),
        RequestField::Mask => Some("mask_image"),
        RequestField::Loras => Some("LoRA adapters"),
        RequestField::AudioLength => Some("audio_length_in_s"),
        RequestField::NumWaveforms => Some("num_waveforms_per_prompt"),
        RequestField::Prompt
        | RequestField::NegativePrompt
        | RequestField::GuidanceRescale
        | RequestField::ClipSkip
        | RequestField::Width
        | RequestField::Height
        | RequestField::Eta
        | RequestField::Strength
        | RequestField::Latents => None,
    }
}

pub(crate) fn to_py(error: diffuse::Error) -> PyErr {
    let mut message = error.to_string();
    if let Some(field) = RequestField::of(&error) {
        if let Some(argument) = argument_name(field) {
            message = message.replacen(
                &format!("invalid {}: ", field.name()),
                &format!("invalid {argument}: "),
                1,
            );
        }
    }
    match &error {
        diffuse::Error::Io { cause, .. } if cause.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(message)
        }
        diffuse::Error::Io { .. } => PyOSError::new_err(message),
        diffuse::Error::Json { .. }
        | diffuse::Error::Unsupported { .. }
        | diffuse::Error::Weights { .. }
        | diffuse::Error::InvalidArgument { .. }
        | diffuse::Error::Pickle { .. } => PyValueError::new_err(message),
        _ => PyRuntimeError::new_err(message),
    }
}

/// A `RuntimeError` with `message`.
pub(crate) fn runtime(message: String) -> PyErr {
    PyRuntimeError::new_err(message)
}
