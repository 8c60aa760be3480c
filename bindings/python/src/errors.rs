//! The library's errors as the Python exceptions diffusers users catch, carrying the library's message.

use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::PyErr;

/// `FileNotFoundError` for a missing file, `OSError` for other I/O failures, `ValueError` for bad arguments,
/// configurations, weights and pickles, `RuntimeError` for the rest.
pub(crate) fn to_py(error: diffuse::Error) -> PyErr {
    let message = error.to_string();
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
