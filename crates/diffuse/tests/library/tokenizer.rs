//! The CLIP tokenizer against transformers 5.24's `CLIPTokenizer`: ids must be equal, exactly, for every
//! prompt in tests/fixtures/tokenizer/cases.json (written by tools/fixtures/fixtures_tokenizer.py), on
//! the real 49,408-token vocabulary in both folder layouts and on small vocabularies. Then the errors
//! for bad folders.

use std::path::{Path, PathBuf};

use diffuse::models::clip::tokenizer::ClipTokenizer;
use diffuse::Error;
use serde_json::Value;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/tokenizer"
);

fn cases() -> Value {
    let text = std::fs::read_to_string(Path::new(FIXTURES).join("cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Compares every prompt of `folder` with transformers; returns the number of prompts checked.
fn check_folder(name: &str) -> usize {
    let all = cases();
    let list = if name.starts_with("small") {
        "small_prompts"
    } else {
        "prompts"
    };
    let prompts: Vec<&str> = all[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let reference = &all["folders"][name];
    let tok = ClipTokenizer::from_folder(Path::new(FIXTURES).join(name)).unwrap();
    assert_eq!(
        tok.pad_id() as u64,
        reference["pad_id"].as_u64().unwrap(),
        "{name} pad id"
    );
    assert_eq!(
        tok.bos_id() as u64,
        reference["bos_id"].as_u64().unwrap(),
        "{name} bos id"
    );
    assert_eq!(
        tok.eos_id() as u64,
        reference["eos_id"].as_u64().unwrap(),
        "{name} eos id"
    );
    assert_eq!(
        tok.max_length() as u64,
        reference["max_length"].as_u64().unwrap()
    );
    assert_eq!(
        tok.vocab_size() as u64,
        reference["vocab_size"].as_u64().unwrap()
    );

    let expected = reference["cases"].as_array().unwrap();
    assert_eq!(prompts.len(), expected.len(), "{name}: prompt count");
    let batch = tok.encode_batch(&prompts).unwrap();
    let mut failures = Vec::new();
    for ((prompt, case), tokens) in prompts.iter().zip(expected).zip(&batch) {
        let ids: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let removed = case["removed"].as_str().map(str::to_string);
        let pooled = case["pooled"].as_u64().unwrap() as usize;
        if tokens.ids != ids {
            failures.push(format!(
                "{prompt:?}: ids\n  got  {:?}\n  want {ids:?}",
                tokens.ids
            ));
        }
        if tokens.truncated != removed {
            failures.push(format!(
                "{prompt:?}: truncated text {:?}, want {removed:?}",
                tokens.truncated
            ));
        }
        if tokens.argmax_position() != pooled
            || tokens.first_position_of(tok.eos_id()) != Some(pooled)
        {
            failures.push(format!(
                "{prompt:?}: pooled position {} / {:?}, want {pooled}",
                tokens.argmax_position(),
                tokens.first_position_of(tok.eos_id())
            ));
        }
        assert_eq!(
            &tok.encode(prompt).unwrap(),
            tokens,
            "encode and encode_batch differ"
        );
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} prompts differ from transformers:\n{}",
        failures.len(),
        prompts.len(),
        failures.join("\n")
    );
    prompts.len()
}

#[test]
fn sd1_layout_a_matches_transformers() {
    assert!(check_folder("sd1") >= 200);
}

#[test]
fn sd2_layout_a_matches_transformers() {
    assert!(check_folder("sd2") >= 200);
}

#[test]
fn saved_layout_b_matches_transformers() {
    assert!(check_folder("saved") >= 200);
}

#[test]
fn small_sd1_layout_a_matches_transformers() {
    assert!(check_folder("small_sd1") >= 100);
}

#[test]
fn small_sd2_layout_b_matches_transformers() {
    assert!(check_folder("small_sd2") >= 100);
}

#[test]
fn small_added_tokens_decoder_config_matches_transformers() {
    assert!(check_folder("small_decoder") >= 100);
}

#[test]
fn small_both_layouts_match_transformers() {
    assert!(check_folder("small_both") >= 100);
}

#[test]
fn small_split_special_tokens_matches_transformers() {
    assert!(check_folder("small_split") >= 100);
}

#[test]
fn tokenizer_json_wins_over_vocab_json() {
    // small_both holds tokenizer.json with 300 merges and vocab.json with 600: ids follow the former.
    let tok = ClipTokenizer::from_folder(Path::new(FIXTURES).join("small_both")).unwrap();
    assert_eq!(tok.vocab_size(), 512 + 300 + 2);
    assert_eq!(tok.eos_id(), 512 + 300 + 1);
}

#[test]
fn sd_pad_tokens() {
    let sd1 = ClipTokenizer::from_folder(Path::new(FIXTURES).join("sd1")).unwrap();
    let sd2 = ClipTokenizer::from_folder(Path::new(FIXTURES).join("sd2")).unwrap();
    assert_eq!(
        (sd1.bos_id(), sd1.eos_id(), sd1.pad_id()),
        (49406, 49407, 49407)
    );
    assert_eq!(
        (sd2.bos_id(), sd2.eos_id(), sd2.pad_id()),
        (49406, 49407, 0)
    );
    let cat = sd2.encode("a photo of a cat").unwrap();
    assert_eq!(&cat.ids[..7], &[49406, 320, 1125, 539, 320, 2368, 49407]);
    assert!(cat.ids[7..].iter().all(|&id| id == 0));
    assert_eq!(cat.ids.len(), 77);
    assert_eq!(cat.truncated, None);
}

/// A fresh folder under the system temp dir holding copies of `from`'s files (if any).
fn scratch(name: &str, from: Option<&str>) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("diffuse-tokenizer-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    if let Some(from) = from {
        for entry in std::fs::read_dir(Path::new(FIXTURES).join(from)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    dir
}

/// Loads `dir`, expects an error whose message contains every part of `needles`, and cleans up.
fn expect_error(dir: &Path, needles: &[&str]) -> Error {
    let error = match ClipTokenizer::from_folder(dir) {
        Ok(_) => panic!("{} loaded, expected an error", dir.display()),
        Err(e) => e,
    };
    let message = error.to_string();
    for needle in needles {
        assert!(
            message.contains(needle),
            "{message:?} does not mention {needle:?}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
    error
}

fn edit_config(dir: &Path, file: &str, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = dir.join(file);
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(json.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_string(&json).unwrap()).unwrap();
}

#[test]
fn missing_folder_and_files() {
    let error = expect_error(&scratch("absent", None).join("nope"), &["nope"]);
    assert!(matches!(error, Error::Io { .. }));

    expect_error(&scratch("empty", None), &["tokenizer_config.json"]);

    let dir = scratch("no-vocab", Some("small_sd1"));
    std::fs::remove_file(dir.join("vocab.json")).unwrap();
    std::fs::remove_file(dir.join("merges.txt")).unwrap();
    expect_error(&dir, &["tokenizer.json", "vocab.json"]);

    let dir = scratch("no-merges", Some("small_sd1"));
    std::fs::remove_file(dir.join("merges.txt")).unwrap();
    expect_error(&dir, &["merges.txt"]);
}

#[test]
fn malformed_files() {
    for (from, file) in [
        ("small_sd1", "tokenizer_config.json"),
        ("small_sd1", "vocab.json"),
        ("small_sd1", "special_tokens_map.json"),
        ("small_sd2", "tokenizer.json"),
    ] {
        let dir = scratch(&format!("malformed-{file}"), Some(from));
        std::fs::write(dir.join(file), "{\"truncated\": ").unwrap();
        let error = expect_error(&dir, &[file]);
        assert!(matches!(error, Error::Json { .. }), "{file}: {error}");
    }

    let dir = scratch("bad-merge-line", Some("small_sd1"));
    std::fs::write(dir.join("merges.txt"), "#version: 0.2\ni n\nt h e\n").unwrap();
    expect_error(&dir, &["merges.txt", "line 3"]);

    let dir = scratch("merge-out-of-vocab", Some("small_sd1"));
    std::fs::write(dir.join("merges.txt"), "#version: 0.2\ni n\nqq zz\n").unwrap();
    expect_error(&dir, &["merges.txt"]);

    let dir = scratch("vocab-id", Some("small_sd1"));
    std::fs::write(dir.join("vocab.json"), "{\"a\": -1}").unwrap();
    expect_error(&dir, &["vocab.json", "\"a\""]);

    let dir = scratch("json-merges", Some("small_sd2"));
    edit_config(&dir, "tokenizer.json", |j| {
        j["model"]["merges"] = serde_json::json!(["i n", ["t"]]);
    });
    expect_error(&dir, &["tokenizer.json", "model.merges[1]"]);
}

#[test]
fn bad_configs() {
    let dir = scratch("pad-null", Some("small_sd1"));
    edit_config(&dir, "special_tokens_map.json", |j| {
        j.insert("pad_token".into(), Value::Null);
    });
    expect_error(&dir, &["special_tokens_map.json", "pad_token", "null"]);

    let dir = scratch("pad-null-config", Some("small_sd2"));
    edit_config(&dir, "tokenizer_config.json", |j| {
        j.insert("pad_token".into(), Value::Null);
    });
    expect_error(&dir, &["tokenizer_config.json", "pad_token"]);

    let dir = scratch("max-length", Some("small_sd2"));
    edit_config(&dir, "tokenizer_config.json", |j| {
        j.remove("model_max_length");
    });
    expect_error(&dir, &["tokenizer_config.json", "model_max_length"]);

    let dir = scratch("max-length-huge", Some("small_sd2"));
    edit_config(&dir, "tokenizer_config.json", |j| {
        j.insert("model_max_length".into(), serde_json::json!(1e30));
    });
    expect_error(&dir, &["tokenizer_config.json", "model_max_length"]);

    let dir = scratch("left", Some("small_sd2"));
    edit_config(&dir, "tokenizer_config.json", |j| {
        j.insert("padding_side".into(), "left".into());
    });
    expect_error(&dir, &["tokenizer_config.json", "padding_side", "left"]);

    let dir = scratch("extra", Some("small_sd1"));
    edit_config(&dir, "special_tokens_map.json", |j| {
        j.insert(
            "additional_special_tokens".into(),
            serde_json::json!(["<x>"]),
        );
    });
    expect_error(
        &dir,
        &["special_tokens_map.json", "additional_special_tokens"],
    );

    let dir = scratch("bad-token", Some("small_sd2"));
    edit_config(&dir, "tokenizer_config.json", |j| {
        j.insert("bos_token".into(), serde_json::json!(7));
    });
    expect_error(&dir, &["tokenizer_config.json", "bos_token"]);

    let dir = scratch("bad-decoder", Some("small_decoder"));
    edit_config(&dir, "tokenizer_config.json", |j| {
        j["added_tokens_decoder"]["0"] = serde_json::json!({"content": 5});
    });
    expect_error(
        &dir,
        &["tokenizer_config.json", "added_tokens_decoder.0.content"],
    );
}
