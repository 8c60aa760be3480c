//! `AudioPipeline`: an AudioLDM model, its weights read on first use and again after a device or dtype change,
//! and text-to-audio generations run with the GIL released.

use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use diffuse::device::{device_from_name, dtype_from_name};
use diffuse::loaders::hub::resolve_model;
use diffuse::loaders::{LoadOptions, PipelineFolder};
use diffuse::pipelines::{AudioLdm, AudioRequest, Output, Stop};
use diffuse::schedulers::SchedulerConfig;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors;
use crate::generator::Generator;
use crate::pipeline::{change_options, lock, variant_named};
use crate::tensors;

/// A tensor as `(f32 bytes, shape)`.
type PyTensor<'py> = (Bound<'py, PyBytes>, Vec<usize>);

/// An AudioLDM model and the device and dtype it runs in.
#[pyclass(frozen, module = "diffuse._native")]
pub(crate) struct AudioPipeline {
    folder: PipelineFolder,
    options: Mutex<LoadOptions>,
    loaded: Mutex<Option<Arc<AudioLdm>>>,
}

#[pymethods]
impl AudioPipeline {
    /// Opens `model` (a diffusers folder or a Hub id) and reads its configurations; the weights are read on
    /// first use.
    #[staticmethod]
    #[pyo3(signature = (model, variant = None, device = "cpu", dtype = "float32"))]
    fn open(
        py: Python<'_>,
        model: &str,
        variant: Option<&str>,
        device: &str,
        dtype: &str,
    ) -> PyResult<Self> {
        let variant = variant_named(variant)?;
        let options = LoadOptions {
            device: device_from_name(device).map_err(errors::to_py)?,
            dtype: dtype_from_name(dtype).map_err(errors::to_py)?,
            variant,
            quantize: None,
        };
        let folder = py
            .detach(|| PipelineFolder::open_path(&resolve_model(model, variant)?, None))
            .map_err(errors::to_py)?;
        Ok(Self {
            folder,
            options: Mutex::new(options),
            loaded: Mutex::new(None),
        })
    }

    /// The folder's pipeline class (`model_index.json`'s `_class_name`).
    #[getter]
    fn pipeline_class(&self) -> String {
        self.folder.index().class_name.clone()
    }

    /// The folder's scheduler as JSON (AudioLDM's pipeline keeps it as written), and no pipeline-filled keys.
    fn scheduler_config(&self) -> PyResult<(String, Vec<&'static str>)> {
        let config = self.folder.scheduler_config().map_err(errors::to_py)?;
        let json = serde_json::to_string(&config).map_err(|e| errors::runtime(e.to_string()))?;
        Ok((json, config.pipeline_filled_keys()))
    }

    /// Moves the pipeline to `device` and/or `dtype`; the weights are read again on next use if either changed.
    #[pyo3(signature = (device = None, dtype = None))]
    fn set_options(&self, device: Option<&str>, dtype: Option<&str>) -> PyResult<()> {
        if change_options(&self.options, device, dtype)? {
            *lock(&self.loaded) = None;
        }
        Ok(())
    }

    /// Reads the weights now (otherwise the first generation does).
    fn load(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.loaded())
            .map(|_| ())
            .map_err(errors::to_py)
    }

    /// Runs one generation; returns `(latents, waveforms, sampling_rate)`: the final latents and the waveforms
    /// `[n, samples]` (None for `output="latent"`). `callback(step_index, timestep, latents)` runs after each
    /// step with the GIL held; an exception it raises ends the generation and is raised here.
    #[pyo3(signature = (
        prompt, negative_prompt, audio_length_s, steps, guidance_scale, num_waveforms, eta, scheduler, latents,
        output, generator, callback
    ))]
    #[allow(clippy::too_many_arguments)]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        prompt: String,
        negative_prompt: String,
        audio_length_s: Option<f64>,
        steps: usize,
        guidance_scale: f64,
        num_waveforms: usize,
        eta: f64,
        scheduler: Option<&str>,
        latents: Option<PyTensor<'py>>,
        output: &str,
        generator: Py<Generator>,
        callback: Option<Py<PyAny>>,
    ) -> PyResult<(PyTensor<'py>, Option<PyTensor<'py>>, usize)> {
        let device = lock(&self.options).device.clone();
        let request = AudioRequest {
            prompt,
            negative_prompt,
            audio_length_s,
            steps,
            guidance_scale,
            num_waveforms,
            eta,
            scheduler: scheduler
                .map(SchedulerConfig::from_json_str)
                .transpose()
                .map_err(errors::to_py)?,
            latents: latents
                .map(|(bytes, shape)| {
                    tensors::from_python(bytes.as_bytes(), &shape, &device, "latents")
                })
                .transpose()?,
            output: if output == "latent" {
                Output::Latents
            } else {
                Output::Images
            },
        };
        let mut raised: Option<PyErr> = None;
        let generated = py.detach(|| {
            let pipe = self.loaded()?;
            let mut stream = generator.get().stream();
            pipe.generate(&request, stream.as_mut(), &mut |progress| {
                Python::attach(|py| {
                    let step = || -> PyResult<()> {
                        py.check_signals()?;
                        if let Some(callback) = &callback {
                            let latents = tensors::to_python(py, progress.latents)?;
                            callback.call1(py, (progress.step - 1, progress.timestep, latents))?;
                        }
                        Ok(())
                    };
                    match step() {
                        Ok(()) => ControlFlow::Continue(()),
                        Err(error) => {
                            raised = Some(error);
                            ControlFlow::Break(Stop::Cancel)
                        }
                    }
                })
            })
        });
        if let Some(error) = raised {
            return Err(error);
        }
        let generated = generated.map_err(errors::to_py)?;
        let latents = tensors::to_python(py, &generated.latents)?;
        let waveforms = if generated.waveforms.is_empty() {
            None
        } else {
            let samples = generated.waveforms[0].len();
            let values: Vec<f32> = generated.waveforms.concat();
            Some((
                PyBytes::new(py, &tensors::f32_bytes(&values)),
                vec![generated.waveforms.len(), samples],
            ))
        };
        Ok((latents, waveforms, generated.sampling_rate))
    }
}

impl AudioPipeline {
    /// The loaded pipeline, reading the weights if they are not yet.
    fn loaded(&self) -> diffuse::Result<Arc<AudioLdm>> {
        let mut loaded = lock(&self.loaded);
        if let Some(pipe) = loaded.as_ref() {
            return Ok(pipe.clone());
        }
        let options = lock(&self.options).clone();
        let pipe = Arc::new(AudioLdm::load(&self.folder, &options)?);
        *loaded = Some(pipe.clone());
        Ok(pipe)
    }
}
