//! `Generator`: torch's generators, bit for bit, and stateful as torch's are (a second call continues the
//! stream where the first left it).

use std::sync::Mutex;

use diffuse::rng::{NoiseSource, PhiloxRng, TorchCpuRng};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

/// A seeded noise stream: `device="cpu"` is `torch.Generator("cpu")` (mt19937), `device="cuda"` is
/// `torch.Generator("cuda")` (Philox), whatever device the pipeline runs on.
#[pyclass(frozen, module = "diffuse._native")]
pub(crate) struct Generator {
    device: String,
    seed: Mutex<u64>,
    stream: Mutex<Box<dyn NoiseSource>>,
}

fn stream(device: &str, seed: u64) -> Box<dyn NoiseSource> {
    if device == "cuda" {
        Box::new(PhiloxRng::new(seed))
    } else {
        Box::new(TorchCpuRng::new(seed))
    }
}

/// `cpu`, or `cuda` for any `cuda:N` (torch's CUDA generator draws the same stream on every GPU).
fn device_kind(device: &str) -> PyResult<String> {
    let device = device.trim().to_ascii_lowercase();
    match device.as_str() {
        "cpu" => Ok(device),
        d if d == "cuda" || d.starts_with("cuda:") => Ok("cuda".into()),
        other => Err(PyValueError::new_err(format!(
            "invalid generator device {other:?}: expected cpu, cuda or cuda:N"
        ))),
    }
}

#[pymethods]
impl Generator {
    /// A generator for `device`, seeded with torch's default seed (67280421310721) until `manual_seed`.
    #[new]
    #[pyo3(signature = (device = "cpu"))]
    fn new(device: &str) -> PyResult<Self> {
        let device = device_kind(device)?;
        const TORCH_DEFAULT_SEED: u64 = 67280421310721;
        Ok(Self {
            stream: Mutex::new(stream(&device, TORCH_DEFAULT_SEED)),
            seed: Mutex::new(TORCH_DEFAULT_SEED),
            device,
        })
    }

    /// Restarts the stream from `seed` and returns the generator, as torch's `manual_seed` does. Negative
    /// seeds wrap to 64 bits, as torch's do. Refused while a generation draws from this generator (waiting
    /// for it could deadlock: the generation needs the GIL for its progress callback).
    fn manual_seed(slf: Py<Self>, seed: i128) -> PyResult<Py<Self>> {
        if !(i64::MIN as i128..=u64::MAX as i128).contains(&seed) {
            return Err(PyValueError::new_err(format!(
                "invalid seed {seed}: expected a 64-bit integer"
            )));
        }
        let seed = seed as u64;
        {
            let this = slf.get();
            let mut current = match this.stream.try_lock() {
                Ok(guard) => guard,
                Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return Err(PyRuntimeError::new_err(
                    "this generator is drawing for a running generation; seed it before or after",
                )),
            };
            *current = stream(&this.device, seed);
            *lock(&this.seed) = seed;
        }
        Ok(slf)
    }

    /// The seed the stream started from.
    fn initial_seed(&self) -> u64 {
        *lock(&self.seed)
    }

    /// `"cpu"` or `"cuda"`.
    #[getter]
    fn device(&self) -> String {
        self.device.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "Generator(device={:?}, initial_seed={})",
            self.device,
            self.initial_seed()
        )
    }
}

impl Generator {
    /// The stream, for one generation at a time.
    pub(crate) fn stream(&self) -> std::sync::MutexGuard<'_, Box<dyn NoiseSource>> {
        lock(&self.stream)
    }
}

/// A poisoned lock only means a generation panicked mid-way; the value is still usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
