//! A1111 `parameters` text: writing as A1111 writes, reading as A1111 reads, and refusing bad input cleanly.

use diffuse::metadata::{GenerationParameters, RngSource};

fn typical() -> GenerationParameters {
    GenerationParameters {
        prompt: "a cat".into(),
        negative_prompt: "blurry".into(),
        steps: 20,
        sampler: "DPM++ 2M".into(),
        schedule_type: Some("Karras".into()),
        cfg_scale: 7.5,
        seed: 42,
        width: 768,
        height: 768,
        model_hash: Some("0123456789".into()),
        model: Some("sd_v1-5".into()),
        rng: RngSource::Cpu,
        ..Default::default()
    }
}

#[test]
fn writes_a1111_layout() {
    assert_eq!(
        typical().to_parameters_string(),
        "a cat\nNegative prompt: blurry\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, \
         Seed: 42, Size: 768x768, Model hash: 0123456789, Model: sd_v1-5, RNG: CPU"
    );
}

#[test]
fn empty_negative_prompt_and_defaults_are_left_out() {
    let params = GenerationParameters {
        negative_prompt: String::new(),
        schedule_type: None,
        model_hash: None,
        model: None,
        rng: RngSource::Gpu,
        cfg_scale: 7.0,
        ..typical()
    };
    assert_eq!(
        params.to_parameters_string(),
        "a cat\nSteps: 20, Sampler: DPM++ 2M, CFG scale: 7.0, Seed: 42, Size: 768x768"
    );
}

#[test]
fn special_values_are_json_strings() {
    // Expected strings are what A1111's quote() (json.dumps, ensure_ascii=False) gives for these values.
    let params = GenerationParameters {
        model: Some("my \"model\", v2 — ü".into()),
        extra: vec![
            ("Lora hashes".into(), "add_detail: 7c6bad76eb54".into()),
            ("Note".into(), "line1\nline2\ttab\\".into()),
        ],
        ..typical()
    };
    let text = params.to_parameters_string();
    let last = text.lines().last().unwrap();
    assert!(last.contains(r#"Model: "my \"model\", v2 — ü""#), "{last}");
    assert!(
        last.ends_with(r#"Lora hashes: "add_detail: 7c6bad76eb54", Note: "line1\nline2\ttab\\""#),
        "{last}"
    );
}

#[test]
fn round_trips() {
    let full = GenerationParameters {
        prompt: "masterpiece, a castle: at night\n(detailed background:1.2)\nthird line, ü ✓"
            .into(),
        negative_prompt: "lowres, bad anatomy\nsecond: line".into(),
        steps: 150,
        sampler: "DPM++ 2M SDE".into(),
        schedule_type: Some("Exponential".into()),
        cfg_scale: 12.25,
        seed: u64::from(u32::MAX) + 7,
        width: 1024,
        height: 576,
        model_hash: Some("e6e99610c4".into()),
        model: Some("dream, shaper: 8 \"final\" \\ v".into()),
        denoising_strength: Some(0.6),
        clip_skip: Some(2),
        rng: RngSource::Nv,
        extra: vec![
            ("Hires upscale".into(), "2".into()),
            ("Lora hashes".into(), "a: 1, b: 2".into()),
            ("Empty".into(), String::new()),
            ("Multi line".into(), "x\ny".into()),
            ("Version".into(), "diffuse 0.1.0".into()),
        ],
    };
    for params in [full, typical(), GenerationParameters::default()] {
        let text = params.to_parameters_string();
        let back = GenerationParameters::parse(&text).unwrap();
        assert_eq!(back, params, "{text}");
        assert_eq!(back.to_parameters_string(), text);
    }
}

#[test]
fn reads_a_real_a1111_infotext() {
    let text = r#"masterpiece, best quality, 1girl, solo, looking at viewer, <lora:add_detail:0.5>
(detailed background:1.2)
Negative prompt: (worst quality, low quality:1.4), lowres, bad anatomy
easynegative
Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 3456789012, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, VAE hash: 735e4c3a44, VAE: vae-ft-mse-840000-ema-pruned.safetensors, Denoising strength: 0.45, Clip skip: 2, RNG: CPU, Hires upscale: 2, Hires steps: 15, Hires upscaler: Latent, Lora hashes: "add_detail: 7c6bad76eb54", TI hashes: "easynegative: c74b4e810b03", ADetailer prompt: "a face, \"smiling\"\nclose-up", Emphasis: Original, Version: v1.10.1"#;
    let params = GenerationParameters::parse(text).unwrap();
    assert_eq!(
        params.prompt,
        "masterpiece, best quality, 1girl, solo, looking at viewer, <lora:add_detail:0.5>\n(detailed background:1.2)"
    );
    assert_eq!(
        params.negative_prompt,
        "(worst quality, low quality:1.4), lowres, bad anatomy\neasynegative"
    );
    assert_eq!(params.steps, 28);
    assert_eq!(params.sampler, "DPM++ 2M");
    assert_eq!(params.schedule_type.as_deref(), Some("Karras"));
    assert_eq!(params.cfg_scale, 7.5);
    assert_eq!(params.seed, 3_456_789_012);
    assert_eq!((params.width, params.height), (512, 768));
    assert_eq!(params.model_hash.as_deref(), Some("6ce0161689"));
    assert_eq!(params.model.as_deref(), Some("v1-5-pruned-emaonly"));
    assert_eq!(params.denoising_strength, Some(0.45));
    assert_eq!(params.clip_skip, Some(2));
    assert_eq!(params.rng, RngSource::Cpu);
    let extra: Vec<(&str, &str)> = params
        .extra
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        extra,
        [
            ("VAE hash", "735e4c3a44"),
            ("VAE", "vae-ft-mse-840000-ema-pruned.safetensors"),
            ("Hires upscale", "2"),
            ("Hires steps", "15"),
            ("Hires upscaler", "Latent"),
            ("Lora hashes", "add_detail: 7c6bad76eb54"),
            ("TI hashes", "easynegative: c74b4e810b03"),
            ("ADetailer prompt", "a face, \"smiling\"\nclose-up"),
            ("Emphasis", "Original"),
            ("Version", "v1.10.1"),
        ]
    );
    assert_eq!(
        GenerationParameters::parse(&params.to_parameters_string()).unwrap(),
        params
    );
}

#[test]
fn reads_the_old_a1111_example() {
    // The example in A1111's parse_generation_parameters docstring: integer CFG, no RNG (= GPU), no Clip skip.
    let text = "girl with an artist's beret, determined, blue eyes\n\
                Negative prompt: ugly, fat, obese\n\
                Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b";
    let params = GenerationParameters::parse(text).unwrap();
    assert_eq!(
        params.prompt,
        "girl with an artist's beret, determined, blue eyes"
    );
    assert_eq!(params.negative_prompt, "ugly, fat, obese");
    assert_eq!(params.cfg_scale, 7.0);
    assert_eq!(params.rng, RngSource::Gpu);
    assert_eq!(params.clip_skip, None);
    assert_eq!(params.model_hash.as_deref(), Some("45dee52b"));
    assert!(params.extra.is_empty());
}

#[test]
fn handles_crlf_and_surrounding_whitespace() {
    let text = "\r\n  a cat  \r\nNegative prompt:   dog \r\nSteps: 5, Sampler: Euler, CFG scale: 1.5, Seed: 0, Size: 64x64\r\n\r\n";
    let params = GenerationParameters::parse(text).unwrap();
    assert_eq!(params.prompt, "a cat");
    assert_eq!(params.negative_prompt, "dog");
    assert_eq!((params.steps, params.width, params.height), (5, 64, 64));
}

fn parse_error(text: &str) -> String {
    match GenerationParameters::parse(text) {
        Ok(params) => panic!("accepted {text:?} as {params:?}"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn malformed_input_gives_clear_errors() {
    let base = "Steps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512";
    assert!(parse_error("").contains("no parameter line"));
    assert!(parse_error("just a prompt\nwith two lines").contains("no parameter line"));
    let cases = [
        ("Steps: 20", "abc", "Steps: abc"),
        ("Steps: 20", "-3", "Steps: -3"),
        ("Seed: 1", "-1", "Seed: -1"),
        (
            "Seed: 1",
            "99999999999999999999999",
            "Seed: 99999999999999999999999",
        ),
        ("CFG scale: 7", "nan", "CFG scale: nan"),
        ("CFG scale: 7", "seven", "CFG scale: seven"),
        ("Size: 512x512", "512", "Size: 512"),
        ("Size: 512x512", "512x", "Size: 512x"),
        ("Size: 512x512", "-5x5", "Size: -5x5"),
    ];
    for (good, bad_value, named) in cases {
        let key = good.split(':').next().unwrap();
        let text = format!(
            "a cat\n{}",
            base.replace(good, &format!("{key}: {bad_value}"))
        );
        let err = parse_error(&text);
        assert!(err.contains(named), "{text:?} -> {err}");
    }
    let err = parse_error(&format!("a cat\n{base}, RNG: XPU"));
    assert!(
        err.contains("RNG: XPU") && err.contains("GPU, CPU or NV"),
        "{err}"
    );
    let err = parse_error(&format!("a cat\n{base}, Denoising strength: inf"));
    assert!(err.contains("Denoising strength: inf"), "{err}");
    for key in ["Steps", "Sampler", "CFG scale", "Seed", "Size"] {
        let without: Vec<&str> = base.split(", ").filter(|p| !p.starts_with(key)).collect();
        let err = parse_error(&format!("a cat\n{}", without.join(", ")));
        assert!(err.contains(&format!("no `{key}`")), "{err}");
    }
}

#[test]
fn odd_input_never_panics() {
    let fragments = [
        "Steps: 1",
        "Seed:",
        ":",
        ",",
        "\"",
        "\\",
        "\"\\\"",
        "\n",
        "Negative prompt:",
        "Size: 1x",
        "ü",
        "x: \"a",
        "Size: 4294967296x1",
        "Clip skip: ",
        "RNG: \"NV\"",
        "  ",
        "a b: \"\\u12\"",
        "Model: \"\"",
    ];
    let mut text = String::new();
    for i in 0..2000usize {
        text.push_str(fragments[(i * 7 + i / 3) % fragments.len()]);
        text.push_str(if i % 5 == 0 { ", " } else { " " });
        let _ = GenerationParameters::parse(&text);
        // Every suffix too, so that each fragment also starts a text.
        if let Some((cut, _)) = text.char_indices().nth(i % 50) {
            let _ = GenerationParameters::parse(&text[cut..]);
        }
    }
}

fn metadata_fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/metadata")
        .join(name)
}

/// JPEG and WebP images as A1111 saves them (Pillow with piexif's EXIF, tests/fixtures/metadata) hold their
/// parameters in the EXIF UserComment; diffuse reads them.
#[test]
fn reads_a1111_jpeg_and_webp() {
    let expected = std::fs::read_to_string(metadata_fixture("a1111.txt")).unwrap();
    for name in ["a1111.jpg", "a1111.webp"] {
        let text = diffuse::pipelines::images::read_image_parameters(&metadata_fixture(name))
            .unwrap()
            .unwrap_or_else(|| panic!("{name}: no parameters"));
        assert_eq!(text, expected, "{name}");
        let params = GenerationParameters::parse(&text).unwrap();
        assert_eq!(
            (params.seed, params.width, params.height),
            (1234567, 64, 48)
        );
    }
}

/// diffuse's JPEG and WebP carry the parameters as A1111 writes them, and decode to the image (WebP exactly:
/// it is lossless).
#[test]
fn writes_jpeg_and_webp_with_parameters() {
    use diffuse::pipelines::{ImageFormat, RgbImage};
    let image = RgbImage {
        width: 20,
        height: 12,
        pixels: (0..20 * 12 * 3).map(|i| (i * 7 % 256) as u8).collect(),
    };
    let params = GenerationParameters {
        prompt: "un phare — «ü»".into(),
        ..typical()
    };
    for format in [ImageFormat::Jpeg, ImageFormat::Webp, ImageFormat::Png] {
        let bytes = image.encode(format, Some(&params)).unwrap();
        let text = diffuse::pipelines::images::image_parameters(&bytes).unwrap();
        assert_eq!(text, Some(params.to_parameters_string()), "{format:?}");
        let decoded = RgbImage::decode(&bytes, "image").unwrap();
        assert_eq!((decoded.width, decoded.height), (20, 12), "{format:?}");
        if format != ImageFormat::Jpeg {
            assert_eq!(decoded, image, "{format:?} is lossless");
        }
        let plain = image.encode(format, None).unwrap();
        assert_eq!(
            diffuse::pipelines::images::image_parameters(&plain).unwrap(),
            None
        );
    }
    let e = ImageFormat::of_path(std::path::Path::new("x.bmp"))
        .unwrap_err()
        .to_string();
    assert!(e.contains(".bmp") && e.contains(".webp"), "{e}");
}
