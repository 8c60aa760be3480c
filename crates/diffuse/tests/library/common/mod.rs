//! Helpers shared by the integration tests: fixture paths and tolerance checks.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

/// `tests/fixtures/<area>` at the repository root.
pub fn fixtures(area: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(area)
}

/// The cases of an area's `cases.json`, as the fixture script wrote them.
pub fn cases(area: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(fixtures(area).join("cases.json")).unwrap();
    match serde_json::from_str(&text).unwrap() {
        serde_json::Value::Array(cases) => cases,
        other => panic!("{area}/cases.json is not a list: {other}"),
    }
}

/// A `kernels::linear` layer with `weight` (`[out, in]`) and, when given, `bias`, in `weight`'s dtype: built as a
/// model builds it, so inside an int8 building scope it is quantized.
pub fn linear_layer(
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> diffuse::internals::kernels::linear::Linear {
    use diffuse::internals::kernels::linear::{linear, linear_no_bias};
    let (out, inner) = weight.dims2().unwrap();
    let mut tensors = HashMap::from([("weight".to_string(), weight.clone())]);
    if let Some(bias) = bias {
        tensors.insert("bias".to_string(), bias.clone());
    }
    let vb = candle_nn::VarBuilder::from_tensors(tensors, weight.dtype(), &Device::Cpu);
    match bias {
        Some(_) => linear(inner, out, vb).unwrap(),
        None => linear_no_bias(inner, out, vb).unwrap(),
    }
}

/// Loads every tensor of a reference safetensors file onto the CPU.
pub fn load_reference(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot read reference {}: {e}", path.display()))
}

/// Fetches tensor `name` from a reference map.
pub fn get<'a>(reference: &'a HashMap<String, Tensor>, name: &str) -> &'a Tensor {
    reference
        .get(name)
        .unwrap_or_else(|| panic!("reference has no tensor `{name}`"))
}

/// The largest absolute difference between `actual` and `expected`, relative to the largest absolute value
/// of `expected`.
pub fn relative_error(actual: &Tensor, expected: &Tensor) -> f64 {
    assert_eq!(actual.dims(), expected.dims(), "shapes differ");
    let a = actual.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let e = expected
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap();
    let diff = (a - &e)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let scale = e.abs().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
    diff / scale.max(f64::MIN_POSITIVE)
}

/// Asserts `relative_error(actual, expected) <= tolerance`, naming `what` on failure.
pub fn assert_close(what: &str, actual: &Tensor, expected: &Tensor, tolerance: f64) {
    let err = relative_error(actual, expected);
    assert!(
        err <= tolerance,
        "{what}: relative error {err:.3e} exceeds {tolerance:.0e}"
    );
}

/// A fresh empty directory under the system temp dir, removed when dropped.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Creates the directory, unique to `name` and this process.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("diffuse-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies the folder `from` recursively to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
