//! Latent previews: the fixed 4 → 3 projection, the [-1, 1] → [0, 255] mapping, upsampling and bad input.

use candle_core::{Device, Tensor};
use diffuse::pipelines::preview::{latent_preview, SD_LATENT_RGB};

#[test]
fn projects_each_latent_pixel_and_upsamples() {
    // Two images of 1×2 latent pixels; image 1's first pixel is the unit vector of channel 0, its second is zero.
    let mut values = vec![0f32; 2 * 4 * 2];
    values[8] = 1.0;
    let latents = Tensor::from_vec(values, (2, 4, 1, 2), &Device::Cpu).unwrap();
    let preview = latent_preview(&latents, 1, 3).unwrap();
    assert_eq!((preview.width, preview.height), (6, 3));
    let expected_first: Vec<u8> = SD_LATENT_RGB[0]
        .iter()
        .map(|f| (((f + 1.0) / 2.0) * 255.0).round() as u8)
        .collect();
    assert_eq!(expected_first, [172, 157, 169]);
    for y in 0..3 {
        for x in 0..6 {
            let at = (y * 6 + x) * 3;
            let want: &[u8] = if x < 3 {
                &expected_first
            } else {
                &[128, 128, 128]
            };
            assert_eq!(&preview.pixels[at..at + 3], want, "pixel ({x}, {y})");
        }
    }
}

#[test]
fn clamps_out_of_range_colours() {
    let latents =
        Tensor::from_vec(vec![10f32, 10.0, 10.0, -10.0], (1, 4, 1, 1), &Device::Cpu).unwrap();
    let preview = latent_preview(&latents, 0, 1).unwrap();
    assert_eq!(preview.pixels, [255, 255, 255]);
}

#[test]
fn refuses_bad_shapes_and_arguments() {
    let three = Tensor::zeros((1, 3, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = latent_preview(&three, 0, 1).unwrap_err().to_string();
    assert!(err.contains("3 channels"), "{err}");
    let four = Tensor::zeros((1, 4, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = latent_preview(&four, 1, 1).unwrap_err().to_string();
    assert!(err.contains("the batch has 1"), "{err}");
    let err = latent_preview(&four, 0, 0).unwrap_err().to_string();
    assert!(err.contains("upscale"), "{err}");
}
