//! One image from a prompt: `cargo run --release -p diffuse --example generate -- "a red circle" [MODEL] [OUT]`.
//!
//! MODEL is a diffusers folder, a Hugging Face Hub id or one `.safetensors` checkpoint (default: the bundled
//! model); OUT is the PNG to write (default `generated.png`), with A1111's parameters in it.

use std::ops::ControlFlow;
use std::path::Path;

use diffuse::loaders::LoadOptions;
use diffuse::metadata::RngSource;
use diffuse::pipelines::{GenerationRequest, Provenance, StableDiffusion};
use diffuse::rng::TorchCpuRng;
use diffuse::schedulers::scheduler_config_for;

fn main() -> diffuse::Result<()> {
    let mut args = std::env::args().skip(1);
    let prompt = args
        .next()
        .unwrap_or_else(|| "a red circle at the top left on a blue background".into());
    let model = args.next().unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/diffuse-tiny").into()
    });
    let out = args.next().unwrap_or_else(|| "generated.png".into());

    let pipe = StableDiffusion::from_pretrained(&model, &LoadOptions::default())?;
    let request = GenerationRequest {
        prompt,
        steps: 20,
        scheduler: Some(scheduler_config_for("DPM++ 2M", &pipe.scheduler)?),
        ..Default::default()
    };
    let seed = 42;
    let generated = pipe.generate(&request, &mut TorchCpuRng::new(seed), &mut |p| {
        eprint!("\rstep {}/{}", p.step, p.total);
        ControlFlow::Continue(())
    })?;
    eprintln!();
    let provenance = Provenance {
        seed,
        rng: RngSource::Cpu,
        ..Default::default()
    };
    let parameters = pipe.image_parameters(&request, &generated, &provenance);
    generated.images[0].save_png(Path::new(&out), Some(&parameters[0]))?;
    println!("{out}");
    Ok(())
}
