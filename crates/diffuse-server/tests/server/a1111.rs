//! The A1111 API: txt2img and img2img with A1111's seeding, the informational endpoints, and errors.

use crate::common::{assert_error, b64, decode_png_b64, start, test_png};
use diffuse::loaders::{LoadOptions, PipelineFolder};
use diffuse::pipelines::{GenerationRequest, StableDiffusion};
use diffuse::rng::{PhiloxRng, TorchCpuRng};
use diffuse::schedulers::scheduler_config_for;
use serde_json::{json, Value};

fn info(body: &Value) -> Value {
    serde_json::from_str(body["info"].as_str().expect("info is a JSON string")).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn txt2img_seeds_each_image_as_a1111_does() {
    let t = start().await;
    let request = json!({
        "prompt": "a lighthouse", "negative_prompt": "fog", "steps": 3, "cfg_scale": 5.5,
        "width": 64, "height": 64, "seed": 5, "sampler_name": "Euler a", "batch_size": 2, "n_iter": 1,
        "restore_faces": false, "enable_hr": false, "styles": [], "alwayson_scripts": {},
        "some_future_field": {"ignored": true},
    });
    let (status, body) = t.post("/sdapi/v1/txt2img", &request).await;
    assert_eq!(status, 200, "{body}");
    let images = body["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(body["parameters"]["prompt"], "a lighthouse");
    let info = info(&body);
    assert_eq!(info["all_seeds"], json!([5, 6]));
    assert_eq!(info["seed"], 5);
    assert_eq!(info["sampler_name"], "Euler a");
    assert_eq!(info["sd_model_name"], "sd1");
    assert_eq!(info["job_timestamp"].as_str().unwrap().len(), 14);
    let hash = crate::common::sd1_hash();
    assert_eq!(info["sd_model_hash"], hash.as_str());
    assert_eq!(
        info["infotexts"][1],
        format!(
            "a lighthouse\nNegative prompt: fog\nSteps: 3, Sampler: Euler a, CFG scale: 5.5, Seed: 6, \
             Size: 64x64, Model hash: {hash}, Model: sd1, RNG: NV"
        )
    );

    // Image i is its own generation with A1111's default GPU generator (Philox) seeded seed + i.
    let pipe = StableDiffusion::load(
        &PipelineFolder::open(&crate::common::sd1()).unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    for (i, served) in images.iter().enumerate() {
        let request = GenerationRequest {
            prompt: "a lighthouse".into(),
            negative_prompt: "fog".into(),
            steps: 3,
            guidance_scale: 5.5,
            width: Some(64),
            height: Some(64),
            scheduler: Some(scheduler_config_for("Euler a", &pipe.scheduler).unwrap()),
            ..Default::default()
        };
        let direct = pipe
            .generate(&request, &mut PhiloxRng::new(5 + i as u64), &mut |_| {
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(
            decode_png_b64(served.as_str().unwrap()).0,
            direct.images[0],
            "image {i}"
        );
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn override_settings_and_karras_schedules_apply() {
    let t = start().await;
    let (status, body) = t
        .post(
            "/sdapi/v1/txt2img",
            &json!({"prompt": "p", "steps": 3, "width": 64, "height": 64, "seed": 11,
                    "sampler_name": "DPM++ 2M", "scheduler": "Karras",
                    "override_settings": {"randn_source": "CPU", "CLIP_stop_at_last_layers": 2,
                                          "sd_model_checkpoint": "sd1 [abcdef]"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let text = &info(&body)["infotexts"][0];
    assert_eq!(
        text.as_str().unwrap(),
        format!(
            "p\nSteps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, Seed: 11, Size: 64x64, \
             Model hash: {}, Model: sd1, Clip skip: 2, RNG: CPU",
            crate::common::sd1_hash()
        )
    );
    // The CPU generator and clip skip 2 (diffusers' clip_skip=1) through the library give the same image.
    let pipe = StableDiffusion::load(
        &PipelineFolder::open(&crate::common::sd1()).unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    let request = GenerationRequest {
        prompt: "p".into(),
        steps: 3,
        guidance_scale: 7.0,
        clip_skip: Some(1),
        width: Some(64),
        height: Some(64),
        scheduler: Some(scheduler_config_for("DPM++ 2M Karras", &pipe.scheduler).unwrap()),
        ..Default::default()
    };
    let direct = pipe
        .generate(&request, &mut TorchCpuRng::new(11), &mut |_| {
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(
        decode_png_b64(body["images"][0].as_str().unwrap()).0,
        direct.images[0]
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn img2img_with_and_without_a_mask() {
    let t = start().await;
    let init = format!("data:image/png;base64,{}", b64(&test_png(64, 64, None)));
    let (status, body) = t
        .post(
            "/sdapi/v1/img2img",
            &json!({"prompt": "p", "steps": 4, "width": 64, "height": 64, "seed": 2,
                    "init_images": [init], "denoising_strength": 0.5, "n_iter": 2}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["images"].as_array().unwrap().len(), 2);
    assert_eq!(
        body["parameters"]["init_images"],
        Value::Null,
        "inputs are not echoed"
    );
    let info = info(&body);
    assert_eq!(info["denoising_strength"], 0.5);
    assert!(info["infotexts"][0]
        .as_str()
        .unwrap()
        .contains("Denoising strength: 0.5"));

    // A mask: white right half repainted; inverted, the left half. Different masks, different images.
    let mask = image::RgbImage::from_fn(64, 64, |x, _| {
        if x >= 32 {
            image::Rgb([255, 255, 255])
        } else {
            image::Rgb([0, 0, 0])
        }
    });
    let mut png = std::io::Cursor::new(Vec::new());
    mask.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let mask = b64(png.get_ref());
    let mut outputs = Vec::new();
    for invert in [0, 1] {
        let (status, body) = t
            .post(
                "/sdapi/v1/img2img",
                &json!({"prompt": "p", "steps": 4, "width": 64, "height": 64, "seed": 2,
                        "init_images": [b64(&test_png(64, 64, None))], "mask": mask,
                        "inpainting_mask_invert": invert, "mask_blur": 4, "inpainting_fill": 1}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        outputs.push(decode_png_b64(body["images"][0].as_str().unwrap()).0);
    }
    assert_ne!(outputs[0], outputs[1]);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn informational_endpoints_answer_as_a1111() {
    let t = start().await;
    let (status, samplers) = t.get("/sdapi/v1/samplers").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = samplers
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for name in ["Euler a", "DPM++ 2M", "DDIM", "UniPC"] {
        assert!(names.contains(&name), "{names:?}");
    }
    assert!(!names.iter().any(|n| n.ends_with("Scheduler")));
    let (_, models) = t.get("/sdapi/v1/sd-models").await;
    let hash = crate::common::sd1_hash();
    assert_eq!(models[0]["model_name"], "sd1");
    assert_eq!(models[0]["title"], format!("sd1 [{hash}]"));
    assert_eq!(models[0]["hash"], hash);
    let (_, schedulers) = t.get("/sdapi/v1/schedulers").await;
    assert_eq!(schedulers[1]["label"], "Karras");
    let (_, options) = t.get("/sdapi/v1/options").await;
    assert_eq!(options["sd_model_checkpoint"], format!("sd1 [{hash}]"));
    let (_, scripts) = t.get("/sdapi/v1/scripts").await;
    assert_eq!(scripts, json!({"txt2img": [], "img2img": []}));
    let (status, progress) = t.get("/sdapi/v1/progress?skip_current_image=true").await;
    assert_eq!(status, 200);
    assert_eq!(progress["progress"], 0.0);
    assert_eq!(progress["state"]["job_count"], 0);
    let (status, _) = t.post("/sdapi/v1/interrupt", &json!({})).await;
    assert_eq!(status, 200);
    // What clients call on start-up answers what is true here, as JSON.
    for (path, expected) in [
        ("/sdapi/v1/sd-vae", json!([])),
        ("/sdapi/v1/upscalers", json!([])),
        ("/sdapi/v1/face-restorers", json!([])),
        ("/sdapi/v1/realesrgan-models", json!([])),
        ("/sdapi/v1/prompt-styles", json!([])),
        ("/sdapi/v1/loras", json!([])),
        ("/sdapi/v1/embeddings", json!({"loaded": {}, "skipped": {}})),
        ("/internal/ping", json!({})),
    ] {
        let (status, body) = t.get(path).await;
        assert_eq!((status, body), (200, expected), "{path}");
    }
    let (status, memory) = t.get("/sdapi/v1/memory").await;
    assert_eq!(status, 200);
    assert!(memory["ram"]["total"].as_u64().unwrap() > 0, "{memory}");
    let (status, flags) = t.get("/sdapi/v1/cmd-flags").await;
    assert_eq!((status, &flags["api"]), (200, &json!(true)));
    for path in [
        "/sdapi/v1/refresh-checkpoints",
        "/sdapi/v1/refresh-vae",
        "/sdapi/v1/skip",
    ] {
        let (status, body) = t.post(path, &json!({})).await;
        assert_eq!((status, body), (200, Value::Null), "{path}");
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn png_info_reads_back_the_parameters() {
    let t = start().await;
    let (_, body) = t
        .post(
            "/sdapi/v1/txt2img",
            &json!({"prompt": "round trip", "steps": 2, "width": 64, "height": 64, "seed": 9}),
        )
        .await;
    let image = body["images"][0].as_str().unwrap();
    let (status, info) = t
        .post(
            "/sdapi/v1/png-info",
            &json!({"image": format!("data:image/png;base64,{image}")}),
        )
        .await;
    assert_eq!(status, 200, "{info}");
    assert!(info["info"]
        .as_str()
        .unwrap()
        .starts_with("round trip\nSteps: 2"));
    assert_eq!(info["parameters"]["Seed"], "9");
    let (status, body) = t.post("/sdapi/v1/png-info", &json!({"image": "!!!"})).await;
    assert_error(status, &body, 400, Some("image"));
    let (status, body) = t
        .post("/sdapi/v1/png-info", &json!({"image": b64(b"plain")}))
        .await;
    assert_error(status, &body, 400, Some("image"));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a1111_errors_name_the_field() {
    let t = start().await;
    let base = json!({"prompt": "p", "steps": 2, "width": 64, "height": 64});
    let with = |extra: Value| {
        let mut body = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let cases = [
        (
            "/sdapi/v1/txt2img",
            with(json!({"enable_hr": true})),
            "enable_hr",
        ),
        (
            "/sdapi/v1/txt2img",
            with(json!({"restore_faces": true})),
            "restore_faces",
        ),
        ("/sdapi/v1/txt2img", with(json!({"tiling": true})), "tiling"),
        (
            "/sdapi/v1/txt2img",
            with(json!({"subseed_strength": 0.3})),
            "subseed_strength",
        ),
        (
            "/sdapi/v1/txt2img",
            with(json!({"styles": ["cinematic"]})),
            "styles",
        ),
        (
            "/sdapi/v1/txt2img",
            with(json!({"script_name": "xyz"})),
            "script_name",
        ),
        (
            "/sdapi/v1/txt2img",
            with(json!({"alwayson_scripts": {"cn": {}}})),
            "alwayson_scripts",
        ),
        (
            "/sdapi/v1/txt2img",
            with(json!({"s_churn": 1.0})),
            "s_churn",
        ),
        (
            "/sdapi/v1/txt2img",
            with(json!({"sampler_name": "Nope"})),
            "sampler_name",
        ),
        (
            "/sdapi/v1/txt2img",
            with(json!({"sampler_name": "DDIM", "scheduler": "Karras"})),
            "scheduler",
        ),
        (
            "/sdapi/v1/txt2img",
            with(json!({"scheduler": "Exponential"})),
            "scheduler",
        ),
        ("/sdapi/v1/txt2img", with(json!({"width": 65})), "width"),
        ("/sdapi/v1/txt2img", with(json!({"height": 0})), "height"),
        (
            "/sdapi/v1/txt2img",
            with(json!({"cfg_scale": -1})),
            "cfg_scale",
        ),
        (
            "/sdapi/v1/txt2img",
            with(json!({"batch_size": 6, "n_iter": 2})),
            "batch_size",
        ),
        ("/sdapi/v1/txt2img", with(json!({"n_iter": 0})), "n_iter"),
        ("/sdapi/v1/txt2img", with(json!({"seed": "lucky"})), "seed"),
        (
            "/sdapi/v1/txt2img",
            with(json!({"override_settings": {"randn_source": "TPU"}})),
            "override_settings.randn_source",
        ),
        (
            "/sdapi/v1/txt2img",
            with(json!({"override_settings": {"sd_model_checkpoint": "sdxl"}})),
            "override_settings.sd_model_checkpoint",
        ),
        (
            "/sdapi/v1/txt2img",
            with(json!({"override_settings": {"CLIP_stop_at_last_layers": 0}})),
            "override_settings.CLIP_stop_at_last_layers",
        ),
        ("/sdapi/v1/img2img", base.clone(), "init_images"),
        (
            "/sdapi/v1/img2img",
            with(json!({"init_images": []})),
            "init_images",
        ),
        (
            "/sdapi/v1/img2img",
            with(json!({"init_images": ["@@@"]})),
            "init_images",
        ),
        (
            "/sdapi/v1/img2img",
            with(json!({"init_images": [b64(b"not a png")]})),
            "init_images",
        ),
        (
            "/sdapi/v1/img2img",
            with(json!({"init_images": [b64(&test_png(64, 64, None))], "denoising_strength": 1.5})),
            "denoising_strength",
        ),
        (
            "/sdapi/v1/img2img",
            with(json!({"init_images": [b64(&test_png(64, 64, None))], "denoising_strength": 0.1})),
            "denoising_strength",
        ),
        (
            "/sdapi/v1/img2img",
            with(json!({"init_images": [b64(&test_png(64, 64, None))], "mask": "%%%"})),
            "mask",
        ),
        (
            "/sdapi/v1/img2img",
            with(json!({"init_images": [b64(&test_png(64, 64, None))],
                        "mask": b64(&test_png(64, 64, None)), "inpainting_mask_invert": 2})),
            "inpainting_mask_invert",
        ),
    ];
    for (path, body, param) in cases {
        let (status, answer) = t.post(path, &body).await;
        assert_error(status, &answer, 400, Some(param));
    }
    t.stop().await;
}

/// A request whose numbers overflow fails with 422 naming the likely cause, instead of a black image with 200;
/// a clip skip beyond the text encoder's layers is refused before the job is queued.
#[tokio::test(flavor = "multi_thread")]
async fn diverged_generations_fail_instead_of_returning_black_images() {
    let t = start().await;
    let base = json!({"prompt": "p", "steps": 3, "width": 64, "height": 64, "seed": 1});
    let with = |extra: Value| {
        let mut body = base.clone();
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    for (extra, cause) in [
        (json!({"cfg_scale": 1e308}), "guidance_scale 1e308"),
        (json!({"sampler_name": "DDIM", "eta": 1e9}), "eta 1e9"),
    ] {
        let (status, body) = t.post("/sdapi/v1/txt2img", &with(extra)).await;
        assert_error(status, &body, 422, None);
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("diverged") && message.contains(cause),
            "{message}"
        );
    }
    let (status, body) = t
        .post(
            "/sdapi/v1/txt2img",
            &with(json!({"override_settings": {"CLIP_stop_at_last_layers": 12}})),
        )
        .await;
    assert_error(status, &body, 400, None);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most"),
        "{body}"
    );
    t.stop().await;
}

/// `POST /sdapi/v1/options` sets server-wide defaults as A1111 clients set them (webuiapi's `util_set_model`):
/// the next request without override_settings uses the model, clip skip and generator set.
#[tokio::test(flavor = "multi_thread")]
async fn options_set_the_server_wide_defaults() {
    let sd2 = crate::common::sd1().with_file_name("sd2");
    let mut config = crate::common::config();
    config.models.push(diffuse_server::ModelSpec {
        name: "sd2".into(),
        path: sd2.clone(),
    });
    let t = crate::common::start_with(config).await;
    let title = format!("sd2 [{}]", crate::common::hash_of(&sd2));
    let request = json!({"prompt": "p", "steps": 2, "seed": 3, "width": 64, "height": 64});
    let (_, before) = t.post("/sdapi/v1/txt2img", &request).await;
    assert_eq!(info(&before)["sd_model_name"], "sd1");

    let set = json!({"sd_model_checkpoint": title, "CLIP_stop_at_last_layers": 2, "randn_source": "CPU",
                     "sd_vae": "Automatic", "samples_format": "png", "show_progressbar": true});
    let (status, body) = t.post("/sdapi/v1/options", &set).await;
    assert_eq!((status, &body), (200, &Value::Null));
    let (_, options) = t.get("/sdapi/v1/options").await;
    assert_eq!(options["sd_model_checkpoint"], title.as_str());
    assert_eq!(options["CLIP_stop_at_last_layers"], 2);
    assert_eq!(options["randn_source"], "CPU");
    let (status, after) = t.post("/sdapi/v1/txt2img", &request).await;
    assert_eq!(status, 200, "{after}");
    let after = info(&after);
    assert_eq!(after["sd_model_name"], "sd2");
    let text = after["infotexts"][0].as_str().unwrap();
    assert!(
        text.contains("Model: sd2, Clip skip: 2, RNG: CPU"),
        "{text}"
    );
    // A request's override_settings still win for that request alone.
    let (_, overridden) = t
        .post(
            "/sdapi/v1/txt2img",
            &json!({"prompt": "p", "steps": 2, "width": 64, "height": 64,
                    "override_settings": {"sd_model_checkpoint": "sd1"}}),
        )
        .await;
    assert_eq!(info(&overridden)["sd_model_name"], "sd1");

    for (bad, param) in [
        (
            json!({"sd_model_checkpoint": "nope"}),
            "sd_model_checkpoint",
        ),
        (json!({"samples_format": "jpg"}), "samples_format"),
        (json!({"sd_vae": "vae-ft-mse.safetensors"}), "sd_vae"),
        (json!({"randn_source": "TPU"}), "randn_source"),
        (
            json!({"CLIP_stop_at_last_layers": 0}),
            "CLIP_stop_at_last_layers",
        ),
    ] {
        let (status, body) = t.post("/sdapi/v1/options", &bad).await;
        assert_error(status, &body, 400, Some(param));
    }
    // A refused POST changes nothing.
    let (_, options) = t.get("/sdapi/v1/options").await;
    assert_eq!(options["sd_model_checkpoint"], title.as_str());
    t.stop().await;
}

/// Runs an A1111 txt2img of many steps in the background and, once sampling has started, posts `action`.
async fn act_while_sampling(
    t: &crate::common::TestServer,
    request: Value,
    action: &str,
) -> (u16, Value) {
    let (client, url) = (t.client.clone(), t.url("/sdapi/v1/txt2img"));
    let run = tokio::spawn(async move {
        let response = client.post(url).json(&request).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    });
    loop {
        let (_, progress) = t.get("/sdapi/v1/progress?skip_current_image=true").await;
        if progress["state"]["sampling_step"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        assert!(
            !run.is_finished(),
            "the generation ended before it could be stopped"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let (status, _) = t.post(action, &json!({})).await;
    assert_eq!(status, 200);
    run.await.unwrap()
}

/// A1111's interrupt answers 200 with the image as it stood and runs no later batch; its skip ends only the
/// current batch.
#[tokio::test(flavor = "multi_thread")]
async fn interrupt_and_skip_return_the_images_as_they_stood() {
    let mut config = crate::common::config();
    config.limits.max_steps = 1000;
    let t = crate::common::start_with(config).await;
    let request = json!({"prompt": "p", "steps": 1000, "width": 64, "height": 64, "seed": 3,
                         "sampler_name": "Euler", "n_iter": 2});
    let (status, body) = act_while_sampling(&t, request.clone(), "/sdapi/v1/interrupt").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["images"].as_array().unwrap().len(),
        1,
        "no batch after the interrupt"
    );
    let (image, text) = decode_png_b64(body["images"][0].as_str().unwrap());
    assert_eq!((image.width, image.height), (64, 64));
    assert!(text.unwrap().contains("Seed: 3"));

    let request = json!({"prompt": "p", "steps": 1000, "width": 64, "height": 64, "seed": 3,
                         "sampler_name": "Euler", "n_iter": 2, "batch_size": 1});
    // Skipping the first image leaves the second to run in full: stop that one with an interrupt too.
    let t2 = &t;
    let skipped = act_while_sampling(t2, request, "/sdapi/v1/skip");
    let interrupter = async {
        // Once the second image is under way (its seed is 4), interrupt it.
        loop {
            let (_, progress) = t2.get("/sdapi/v1/progress?skip_current_image=true").await;
            let step = progress["state"]["sampling_step"].as_u64().unwrap_or(0);
            if step > 1002 {
                t2.post("/sdapi/v1/interrupt", &json!({})).await;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    let ((status, body), ()) = tokio::join!(skipped, interrupter);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["images"].as_array().unwrap().len(),
        2,
        "the skip ended the first image only"
    );
    t.stop().await;
}
