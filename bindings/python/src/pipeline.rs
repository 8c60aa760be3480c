//! `Pipeline`: one model (folder, Hub id or single file), its weights read on first use and again after a
//! device or dtype change, and generations run with the GIL released.

use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use diffuse::device::{device_from_name, dtype_from_name, Quantization};
use diffuse::loaders::hub::{resolve_config, resolve_model};
use diffuse::loaders::tiny_vae::load_tiny_decoder;
use diffuse::loaders::{LoadOptions, PipelineFolder, Variant};
use diffuse::pipelines::{
    EmbeddingChoice, GenerationRequest, InitImage, LoraChoice, LoraSource, Output, PromptSyntax,
    StableDiffusion, Stop,
};
use diffuse::schedulers::SchedulerConfig;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors;
use crate::generator::Generator;
use crate::tensors;

/// A model and the device and dtype it runs in.
#[pyclass(frozen, module = "diffuse._native")]
pub(crate) struct Pipeline {
    folder: PipelineFolder,
    options: Mutex<LoadOptions>,
    loaded: Mutex<Option<Arc<StableDiffusion>>>,
    tiny_decoder: Mutex<Option<String>>,
}

/// An image as `(width, height, RGB bytes)`.
type PyImage<'py> = (usize, usize, Bound<'py, PyBytes>);
/// A tensor as `(f32 bytes, shape)`.
type PyTensor<'py> = (Bound<'py, PyBytes>, Vec<usize>);

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn variant_named(name: Option<&str>) -> PyResult<Variant> {
    match name {
        None => Ok(Variant::Default),
        Some("fp16") => Ok(Variant::Fp16),
        Some(other) => Err(PyValueError::new_err(format!(
            "invalid variant {other:?}: diffuse reads the plain weights or the \"fp16\" variant"
        ))),
    }
}

/// Sets `device` and/or `dtype` in `options`; whether either changed (the weights must then be read again).
pub(crate) fn change_options(
    options: &Mutex<LoadOptions>,
    device: Option<&str>,
    dtype: Option<&str>,
) -> PyResult<bool> {
    let mut options = lock(options);
    let mut changed = options.clone();
    if let Some(device) = device {
        changed.device = device_from_name(device).map_err(errors::to_py)?;
    }
    if let Some(dtype) = dtype {
        changed.dtype = dtype_from_name(dtype).map_err(errors::to_py)?;
    }
    let differs = !changed.device.same_device(&options.device) || changed.dtype != options.dtype;
    if let Some(quantize) = changed.quantize {
        quantize
            .check(&changed.device, changed.dtype)
            .map_err(errors::to_py)?;
    }
    if differs {
        *options = changed;
    }
    Ok(differs)
}

#[pymethods]
impl Pipeline {
    /// Opens `model` (a diffusers folder, a Hub id, or one `.safetensors` checkpoint) and reads its
    /// configurations; the weights are read on first use. `config` gives a single file's configs (a folder
    /// or Hub id).
    #[staticmethod]
    #[pyo3(signature = (model, variant = None, config = None, device = "cpu", dtype = "float32", quantize = None))]
    fn open(
        py: Python<'_>,
        model: &str,
        variant: Option<&str>,
        config: Option<&str>,
        device: &str,
        dtype: &str,
        quantize: Option<&str>,
    ) -> PyResult<Self> {
        let variant = variant_named(variant)?;
        let options = LoadOptions {
            device: device_from_name(device).map_err(errors::to_py)?,
            dtype: dtype_from_name(dtype).map_err(errors::to_py)?,
            variant,
            quantize: quantize
                .map(Quantization::from_name)
                .transpose()
                .map_err(errors::to_py)?,
        };
        if let Some(q) = options.quantize {
            q.check(&options.device, options.dtype)
                .map_err(errors::to_py)?;
        }
        let folder = py
            .detach(|| {
                let path = resolve_model(model, variant)?;
                let config = config.map(resolve_config).transpose()?;
                PipelineFolder::open_path(&path, config)
            })
            .map_err(errors::to_py)?;
        Ok(Self {
            folder,
            options: Mutex::new(options),
            loaded: Mutex::new(None),
            tiny_decoder: Mutex::new(None),
        })
    }

    /// The folder's pipeline class (`model_index.json`'s `_class_name`).
    #[getter]
    fn pipeline_class(&self) -> String {
        self.folder.index().class_name.clone()
    }

    /// The component names of `model_index.json`.
    #[getter]
    fn components(&self) -> Vec<String> {
        self.folder.index().components.keys().cloned().collect()
    }

    /// The pipeline's own scheduler as JSON, and the keys the pipeline filled in (diffusers'
    /// `_use_default_values`).
    fn scheduler_config(&self) -> PyResult<(String, Vec<&'static str>)> {
        let config = StableDiffusion::folder_scheduler(&self.folder).map_err(errors::to_py)?;
        let json = serde_json::to_string(&config).map_err(|e| errors::runtime(e.to_string()))?;
        Ok((json, config.pipeline_filled_keys()))
    }

    /// Moves the pipeline to `device` and/or `dtype`; the weights are read again on next use if either
    /// changed.
    #[pyo3(signature = (device = None, dtype = None))]
    fn set_options(&self, device: Option<&str>, dtype: Option<&str>) -> PyResult<()> {
        if change_options(&self.options, device, dtype)? {
            *lock(&self.loaded) = None;
        }
        Ok(())
    }

    /// Decodes with the TAESD (`AutoencoderTiny`) at `spec` (a folder or Hub id) instead of the VAE, or with the
    /// VAE again for `None`; checked now, attached when the weights are next read.
    #[pyo3(signature = (spec))]
    fn set_tiny_decoder(&self, py: Python<'_>, spec: Option<String>) -> PyResult<()> {
        if let Some(spec) = &spec {
            py.detach(|| load_tiny_decoder(spec, &LoadOptions::default(), "vae"))
                .map_err(errors::to_py)?;
        }
        let mut current = lock(&self.tiny_decoder);
        if *current != spec {
            *current = spec;
            *lock(&self.loaded) = None;
        }
        Ok(())
    }

    /// `"cpu"` or `"cuda:N"`.
    #[getter]
    fn device(&self) -> String {
        match lock(&self.options).device.location() {
            candle_core::DeviceLocation::Cpu => "cpu".into(),
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            candle_core::DeviceLocation::Metal { gpu_id } => format!("mps:{gpu_id}"),
        }
    }

    /// `"int8"` when the UNet is quantized, else `None`.
    #[getter]
    fn quantize(&self) -> Option<&'static str> {
        lock(&self.options).quantize.map(Quantization::name)
    }

    /// `"float32"`, `"float16"` or `"bfloat16"`.
    #[getter]
    fn dtype(&self) -> &'static str {
        match lock(&self.options).dtype {
            candle_core::DType::F16 => "float16",
            candle_core::DType::BF16 => "bfloat16",
            _ => "float32",
        }
    }

    /// Reads the weights now (otherwise the first generation does).
    fn load(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.loaded())
            .map(|_| ())
            .map_err(errors::to_py)
    }

    /// Runs one generation; returns `(latents, decoded, images)`: the final latents, the VAE's output in
    /// [-1, 1] (None for `output="latent"`) and the 8-bit images. `callback(step_index, timestep, latents)`
    /// runs after each step with the GIL held; it returns True to stop and decode the latents as they
    /// stand (diffusers' `interrupt`), and an exception it raises ends the generation and is raised here.
    #[pyo3(signature = (
        prompt, negative_prompt, steps, guidance_scale, guidance_rescale, clip_skip, width, height,
        num_images, eta, scheduler, image, mask, strength, latents, prompt_syntax, loras, embeddings, output,
        generator, callback
    ))]
    #[allow(clippy::too_many_arguments)]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        prompt: String,
        negative_prompt: String,
        steps: usize,
        guidance_scale: f64,
        guidance_rescale: f64,
        clip_skip: Option<usize>,
        width: Option<usize>,
        height: Option<usize>,
        num_images: usize,
        eta: f64,
        scheduler: Option<&str>,
        image: Option<PyImage<'py>>,
        mask: Option<PyImage<'py>>,
        strength: f64,
        latents: Option<PyTensor<'py>>,
        prompt_syntax: &str,
        loras: Vec<(String, f64, f64)>,
        embeddings: Vec<(String, Option<String>)>,
        output: &str,
        generator: Py<Generator>,
        callback: Option<Py<PyAny>>,
    ) -> PyResult<(PyTensor<'py>, Option<PyTensor<'py>>, Vec<PyImage<'py>>)> {
        let device = lock(&self.options).device.clone();
        let image_of = |image: Option<PyImage<'py>>, what: &str| {
            image
                .map(|(w, h, bytes)| tensors::image(w, h, bytes.as_bytes().to_vec(), what))
                .transpose()
        };
        let init = image_of(image, "image")?.map(|image| InitImage {
            image,
            strength,
            mask: None,
        });
        let mask = image_of(mask, "mask_image")?;
        let init = match (init, mask) {
            (Some(init), mask) => Some(InitImage { mask, ..init }),
            (None, Some(_)) => {
                return Err(PyValueError::new_err(
                    "mask_image needs an image to repaint",
                ))
            }
            (None, None) => None,
        };
        let request = GenerationRequest {
            prompt,
            negative_prompt,
            steps,
            guidance_scale,
            guidance_rescale,
            clip_skip,
            width,
            height,
            num_images,
            eta,
            scheduler: scheduler
                .map(SchedulerConfig::from_json_str)
                .transpose()
                .map_err(errors::to_py)?,
            init,
            latents: latents
                .map(|(bytes, shape)| {
                    tensors::from_python(bytes.as_bytes(), &shape, &device, "latents")
                })
                .transpose()?,
            prompt_syntax: match prompt_syntax {
                "a1111" => PromptSyntax::A1111,
                "plain" => PromptSyntax::Plain,
                other => {
                    return Err(PyValueError::new_err(format!(
                        "invalid prompt_syntax {other:?}: expected \"plain\" or \"a1111\""
                    )))
                }
            },
            loras: loras
                .into_iter()
                .map(|(path, text_encoder_weight, unet_weight)| LoraChoice {
                    source: LoraSource::File(path.into()),
                    text_encoder_weight,
                    unet_weight,
                })
                .collect(),
            embeddings: embeddings
                .into_iter()
                .map(|(path, token)| EmbeddingChoice {
                    path: path.into(),
                    token,
                })
                .collect(),
            output: match output {
                "latent" => Output::Latents,
                _ => Output::Images,
            },
        };

        let mut raised: Option<PyErr> = None;
        let generated = py.detach(|| {
            let pipe = self.loaded()?;
            let mut stream = generator.get().stream();
            pipe.generate(&request, stream.as_mut(), &mut |progress| {
                Python::attach(|py| {
                    let step = || -> PyResult<bool> {
                        py.check_signals()?;
                        let Some(callback) = &callback else {
                            return Ok(false);
                        };
                        let latents = tensors::to_python(py, progress.latents)?;
                        callback
                            .call1(py, (progress.step - 1, progress.timestep, latents))?
                            .is_truthy(py)
                    };
                    match step() {
                        Ok(false) => ControlFlow::Continue(()),
                        Ok(true) => ControlFlow::Break(Stop::Interrupt),
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
        let decoded = generated
            .decoded
            .as_ref()
            .map(|d| tensors::to_python(py, d))
            .transpose()?;
        let images = generated
            .images
            .into_iter()
            .map(|image| (image.width, image.height, PyBytes::new(py, &image.pixels)))
            .collect();
        Ok((latents, decoded, images))
    }
}

impl Pipeline {
    /// The loaded pipeline, reading the weights if they are not yet.
    fn loaded(&self) -> diffuse::Result<Arc<StableDiffusion>> {
        let mut loaded = lock(&self.loaded);
        if let Some(pipe) = loaded.as_ref() {
            return Ok(pipe.clone());
        }
        let options = lock(&self.options).clone();
        let mut pipe = StableDiffusion::load(&self.folder, &options)?;
        if let Some(spec) = lock(&self.tiny_decoder).as_deref() {
            pipe = pipe.with_tiny_decoder(load_tiny_decoder(spec, &options, "vae")?)?;
        }
        let pipe = Arc::new(pipe);
        *loaded = Some(pipe.clone());
        Ok(pipe)
    }
}
