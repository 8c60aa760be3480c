//! `diffuse._native`: the engine under the `diffuse` Python package. The package (`python/diffuse`) gives it
//! diffusers' class names, arguments and defaults; this module holds the loaded pipeline, the generators and the
//! conversion of requests and results, and releases the GIL while a generation runs.

mod audio;
mod errors;
mod generator;
mod pipeline;
mod tensors;

use pyo3::prelude::*;

/// The diffusers scheduler classes the engine implements.
#[pyfunction]
fn scheduler_classes() -> Vec<&'static str> {
    diffuse::schedulers::scheduler_classes().collect()
}

/// Checks a scheduler configuration (JSON with `_class_name`) by building it for one step; raises
/// `ValueError` naming the key or value that cannot be honored.
#[pyfunction]
fn check_scheduler_config(json: &str) -> PyResult<()> {
    let config =
        diffuse::schedulers::SchedulerConfig::from_json_str(json).map_err(errors::to_py)?;
    config
        .build(&diffuse::schedulers::TimestepRequest::Steps(1))
        .map_err(errors::to_py)?;
    Ok(())
}

/// Reads a `scheduler_config.json` file (Python's JSON dialect) and returns it as JSON text.
#[pyfunction]
fn read_scheduler_config(path: &str) -> PyResult<String> {
    let config = diffuse::schedulers::SchedulerConfig::from_file(path).map_err(errors::to_py)?;
    serde_json::to_string(&config).map_err(|e| errors::runtime(e.to_string()))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<generator::Generator>()?;
    m.add_class::<pipeline::Pipeline>()?;
    m.add_class::<audio::AudioPipeline>()?;
    m.add_function(wrap_pyfunction!(scheduler_classes, m)?)?;
    m.add_function(wrap_pyfunction!(check_scheduler_config, m)?)?;
    m.add_function(wrap_pyfunction!(read_scheduler_config, m)?)?;
    Ok(())
}
