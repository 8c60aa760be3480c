//! Tiled VAE decoding equals diffusers' `enable_tiling()` decode (references from
//! `tools/fixtures/make_fixtures.py perf`, tiny sd1 VAE: 8-latent tiles, overlap 0.25).

use crate::common::{assert_close, fixtures, get, load_reference, relative_error};
use candle_core::DType;
use diffuse::loaders::{LoadOptions, PipelineFolder};
use diffuse::models::vae::VaeTiling;

const F32_TOLERANCE: f64 = 1e-4;
const BF16_TOLERANCE: f64 = 8e-2;

fn load_vae(dtype: DType) -> diffuse::models::vae::AutoencoderKL {
    let folder = PipelineFolder::open(&fixtures("models").join("sd1")).unwrap();
    let opts = LoadOptions {
        dtype,
        ..LoadOptions::default()
    };
    folder.load_vae(&opts).unwrap()
}

#[test]
fn tiled_decode_matches_diffusers() {
    let reference = load_reference(&fixtures("perf").join("vae_tiling.safetensors"));
    let mut vae = load_vae(DType::F32);
    vae.enable_tiling();
    assert_eq!(
        vae.tiling(),
        Some(&VaeTiling {
            latent_tile: 8,
            sample_tile: 64,
            overlap: 0.25
        })
    );
    for case in ["square", "ragged"] {
        let z = get(&reference, &format!("{case}.z"));
        let want = get(&reference, &format!("{case}.tiled"));
        let got = vae.decode(z).unwrap();
        assert_close(case, &got, want, F32_TOLERANCE);
        // The seams are really blended: decoding whole gives a different image.
        vae.set_tiling(None);
        assert!(
            relative_error(&vae.decode(z).unwrap(), want) > 1e-2,
            "{case}"
        );
        vae.enable_tiling();
    }
    let mut vae = load_vae(DType::BF16);
    vae.enable_tiling();
    let z = get(&reference, "square.z").to_dtype(DType::BF16).unwrap();
    let got = vae.decode(&z).unwrap();
    assert_eq!(got.dtype(), DType::BF16);
    assert_close(
        "square bf16",
        &got,
        get(&reference, "square.tiled"),
        BF16_TOLERANCE,
    );
}

#[test]
fn tiling_that_cannot_advance_is_an_error() {
    let mut vae = load_vae(DType::F32);
    vae.set_tiling(Some(VaeTiling {
        latent_tile: 1,
        sample_tile: 8,
        overlap: 0.25,
    }));
    let z =
        candle_core::Tensor::zeros((1, 4, 3, 3), DType::F32, &candle_core::Device::Cpu).unwrap();
    let err = vae.decode(&z).unwrap_err().to_string();
    assert!(err.contains("vae tiling"), "{err}");
}
