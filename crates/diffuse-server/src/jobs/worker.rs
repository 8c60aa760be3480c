//! A worker thread: takes jobs off the queue and runs them through the pipeline, off the async runtime.

use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use diffuse::pipelines::{AudioLdm, AudioRequest, Progress, Stop};

use super::job::{EarlyEnd, ImageOutput, Job, JobState};
use super::spec::JobSpec;
use super::Engine;
use crate::error::ApiError;
use crate::metrics::{Metrics, Outcome};

/// Longest side of a preview, in pixels: latents are upsampled up to this.
const PREVIEW_SIDE: usize = 256;

/// Runs jobs until the queue closes.
pub(crate) fn run(engine: Arc<Engine>) {
    while let Some(job) = engine.queue.pop() {
        run_one(&engine, &job);
    }
}

fn run_one(engine: &Engine, job: &Job) {
    let spec = match job.take_spec() {
        Some(spec) if job.cancel_reason().is_none() => spec,
        _ => {
            engine.end(job, JobState::Cancelled, Vec::new(), None);
            return;
        }
    };
    job.update(|s| {
        s.state = JobState::Running;
        s.started_at = Some(crate::clock::unix_seconds());
    });
    engine.running.fetch_add(1, Ordering::SeqCst);
    let (state, outputs, error) = execute(&engine.metrics, job, spec, &mut |_| {});
    engine.running.fetch_sub(1, Ordering::SeqCst);
    engine.end(job, state, outputs, error);
}

/// How a generation ended: the job's final state, its outputs and the error of a failed job.
pub(crate) type Ending = (JobState, Vec<ImageOutput>, Option<ApiError>);

/// Runs `spec` for `job` (a panic is the job's failure, not the thread's), updating the job's status at every
/// step and then calling `each_step` (which may ask the job to stop).
pub(crate) fn execute(
    metrics: &Metrics,
    job: &Job,
    spec: JobSpec,
    each_step: &mut dyn FnMut(&Job),
) -> Ending {
    let result = catch_unwind(AssertUnwindSafe(|| {
        generate(metrics, job, &spec, each_step)
    }));
    drop(spec);
    match result {
        Ok(Ok(outputs)) => (JobState::Succeeded, outputs, None),
        Ok(Err(diffuse::Error::Cancelled)) => (JobState::Cancelled, Vec::new(), None),
        Ok(Err(e)) => {
            tracing::warn!("job {} failed: {e}", job.id);
            (JobState::Failed, Vec::new(), Some(ApiError::from(e)))
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            tracing::error!("job {} panicked: {message}", job.id);
            (
                JobState::Failed,
                Vec::new(),
                Some(ApiError::internal(format!("generation failed: {message}"))),
            )
        }
    }
}

fn generate(
    metrics: &Metrics,
    job: &Job,
    spec: &JobSpec,
    each_step: &mut dyn FnMut(&Job),
) -> diffuse::Result<Vec<ImageOutput>> {
    if let Some((request, pipeline)) = spec.audio() {
        return generate_audio(metrics, job, spec, (request, pipeline), each_step);
    }
    let Some((request, pipeline)) = spec.image() else {
        return Err(diffuse::Error::invalid(
            "model",
            format!(
                "{}: the job's request does not fit the model's pipeline",
                spec.model.name
            ),
        ));
    };
    let generations = spec.generations();
    let mut outputs = Vec::with_capacity(spec.images);
    for index in 0..generations {
        if job.cancel_reason().is_some() {
            return Err(diffuse::Error::Cancelled);
        }
        if job.early_end() == Some(EarlyEnd::Interrupt) {
            break;
        }
        let mut noise = spec.noise(index);
        let mut last_step = Instant::now();
        let mut progress = |p: &Progress| {
            metrics.step(last_step.elapsed());
            let preview = preview_png(pipeline, p);
            job.update(|s| {
                s.step = index * p.total + p.step;
                s.total_steps = generations * p.total;
                if preview.is_some() {
                    s.preview = preview;
                }
            });
            each_step(job);
            last_step = Instant::now();
            stop_or_continue(job)
        };
        let generated = pipeline.generate(request, noise.as_mut(), &mut progress)?;
        job.clear_skip();
        let seed = spec.generation_seed(index);
        let parameters = spec.image_parameters(seed, &generated);
        for (image, parameters) in generated.images.iter().zip(parameters) {
            outputs.push(ImageOutput {
                png: image.to_png(Some(&parameters))?,
                wav: None,
                seed,
                width: image.width,
                height: image.height,
                infotext: parameters.to_parameters_string(),
            });
        }
    }
    Ok(outputs)
}

/// An audio job: one generation of `num_waveforms` waveforms; each output is the WAV and its spectrogram's PNG,
/// both with the generation parameters.
fn generate_audio(
    metrics: &Metrics,
    job: &Job,
    spec: &JobSpec,
    (request, pipeline): (&AudioRequest, &AudioLdm),
    each_step: &mut dyn FnMut(&Job),
) -> diffuse::Result<Vec<ImageOutput>> {
    let plan = pipeline.plan(request)?;
    let mut noise = spec.noise(0);
    let mut last_step = Instant::now();
    let mut progress = |p: &Progress| {
        metrics.step(last_step.elapsed());
        job.update(|s| {
            s.step = p.step;
            s.total_steps = p.total;
        });
        each_step(job);
        last_step = Instant::now();
        stop_or_continue(job)
    };
    let generated = pipeline.generate(request, noise.as_mut(), &mut progress)?;
    let parameters = pipeline.audio_parameters(request, &plan, &spec.provenance(spec.seed));
    let mut outputs = Vec::with_capacity(generated.waveforms.len());
    for (i, (waveform, parameters)) in generated.waveforms.iter().zip(parameters).enumerate() {
        let text = parameters.to_parameters_string();
        let picture = generated.spectrogram_image(i)?;
        outputs.push(ImageOutput {
            png: picture.to_png(Some(&parameters))?,
            wav: Some(diffuse::pipelines::wav::encode_wav(
                waveform,
                generated.sampling_rate as u32,
                Some(&text),
            )),
            seed: spec.seed,
            width: picture.width,
            height: picture.height,
            infotext: text,
        });
    }
    Ok(outputs)
}

/// Whether the generation goes on after a step: it stops when the job was cancelled, and finishes with the
/// image as it stands on A1111's skip or interrupt.
fn stop_or_continue(job: &Job) -> ControlFlow<Stop> {
    if job.cancel_reason().is_some() {
        ControlFlow::Break(Stop::Cancel)
    } else if job.early_end().is_some() {
        ControlFlow::Break(Stop::Finish)
    } else {
        ControlFlow::Continue(())
    }
}

/// The preview of the batch's first image (TAESD's decode when the model has one, else the cheap projection), as
/// PNG; `None` if it cannot be made (never fatal).
fn preview_png(
    pipeline: &diffuse::pipelines::StableDiffusion,
    p: &Progress,
) -> Option<Arc<Vec<u8>>> {
    let (_, _, h, w) = p.latents.dims4().ok()?;
    let upscale = (PREVIEW_SIDE / h.max(w).max(1)).clamp(1, 8);
    let image = pipeline.preview(p.latents, 0, upscale).ok()?;
    image.to_png(None).ok().map(Arc::new)
}

/// How a job's end counts in the metrics.
pub(crate) fn outcome(state: JobState) -> Outcome {
    match state {
        JobState::Succeeded => Outcome::Succeeded,
        JobState::Cancelled => Outcome::Cancelled,
        _ => Outcome::Failed,
    }
}
