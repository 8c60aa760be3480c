//! AUTOMATIC1111's generation parameters text, the `parameters` tEXt chunk of its PNGs ("infotext").
//!
//! Written as A1111's `create_infotext` writes it:
//! ```text
//! <prompt, possibly several lines>
//! Negative prompt: <negative prompt>          (left out when empty)
//! Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 42, Size: 768x768, ...
//! ```
//! and read as its `parse_generation_parameters` reads it: the last line holds the parameters when at least three
//! `Key: value` pairs are found on it; values holding `,`, `:` or a newline are JSON strings.

use std::fmt::Write;
use std::sync::LazyLock;

use regex::Regex;

use crate::{Error, Result};

/// A1111's reader pattern (`re_param` in `modules/infotext_utils.py`): one `Key: value` pair.
static PARAM: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)"#)
        .expect("the parameter pattern is a valid constant")
});

const NEGATIVE_PROMPT: &str = "Negative prompt:";

/// A1111's "RNG" setting: where the initial noise was drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RngSource {
    /// "GPU": torch's generator on the device that ran the model (A1111's default, not written).
    #[default]
    Gpu,
    /// "CPU": torch's CPU generator (`crate::rng::TorchCpuRng`).
    Cpu,
    /// "NV": A1111's CPU port of the CUDA generator (`crate::rng::PhiloxRng`).
    Nv,
}

impl RngSource {
    /// The value A1111 writes for this source.
    pub fn as_str(self) -> &'static str {
        match self {
            RngSource::Gpu => "GPU",
            RngSource::Cpu => "CPU",
            RngSource::Nv => "NV",
        }
    }

    fn from_value(value: &str) -> Result<Self> {
        match value.trim() {
            "GPU" => Ok(RngSource::Gpu),
            "CPU" => Ok(RngSource::Cpu),
            "NV" => Ok(RngSource::Nv),
            other => Err(bad_value("RNG", other, "GPU, CPU or NV")),
        }
    }
}

/// The settings of one generated image, as A1111 records them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationParameters {
    /// The prompt; may span several lines (each line is trimmed when read back).
    pub prompt: String,
    /// The negative prompt; empty means none, and its line is left out.
    pub negative_prompt: String,
    /// "Steps".
    pub steps: u32,
    /// "Sampler", in A1111's naming (e.g. "DPM++ 2M", "Euler a").
    pub sampler: String,
    /// "Schedule type" (e.g. "Karras"), when recorded.
    pub schedule_type: Option<String>,
    /// "CFG scale".
    pub cfg_scale: f64,
    /// "Seed".
    pub seed: u64,
    /// The first half of "Size: WxH".
    pub width: u32,
    /// The second half of "Size: WxH".
    pub height: u32,
    /// "Model hash": A1111's short hash, the first 10 hex digits of the checkpoint file's SHA-256.
    pub model_hash: Option<String>,
    /// "Model": the checkpoint's name.
    pub model: Option<String>,
    /// "Denoising strength" (img2img).
    pub denoising_strength: Option<f64>,
    /// "Clip skip" in A1111's numbering (2 = skip the last layer = diffusers' `clip_skip=1`); A1111 writes it
    /// only above 1, and `None` means 1.
    pub clip_skip: Option<u32>,
    /// "RNG"; A1111 leaves out its default, "GPU", and a missing key reads as "GPU".
    pub rng: RngSource,
    /// Every other `Key: value` pair, in order, values unquoted. Keys must be made of word characters, spaces,
    /// `-` and `/` (at least two characters) for a reader to find them; they are written after the fields above.
    pub extra: Vec<(String, String)>,
}

impl GenerationParameters {
    /// The `parameters` text, as A1111 writes it.
    pub fn to_parameters_string(&self) -> String {
        let mut pairs: Vec<(&str, String)> = vec![
            ("Steps", self.steps.to_string()),
            ("Sampler", self.sampler.clone()),
        ];
        if let Some(schedule) = &self.schedule_type {
            pairs.push(("Schedule type", schedule.clone()));
        }
        pairs.push(("CFG scale", python_float(self.cfg_scale)));
        pairs.push(("Seed", self.seed.to_string()));
        pairs.push(("Size", format!("{}x{}", self.width, self.height)));
        if let Some(hash) = &self.model_hash {
            pairs.push(("Model hash", hash.clone()));
        }
        if let Some(model) = &self.model {
            pairs.push(("Model", model.clone()));
        }
        if let Some(strength) = self.denoising_strength {
            pairs.push(("Denoising strength", python_float(strength)));
        }
        if let Some(clip_skip) = self.clip_skip {
            pairs.push(("Clip skip", clip_skip.to_string()));
        }
        if self.rng != RngSource::Gpu {
            pairs.push(("RNG", self.rng.as_str().to_string()));
        }
        pairs.extend(self.extra.iter().map(|(k, v)| (k.as_str(), v.clone())));

        let mut text = self.prompt.clone();
        if !self.negative_prompt.is_empty() {
            let _ = write!(text, "\n{NEGATIVE_PROMPT} {}", self.negative_prompt);
        }
        text.push('\n');
        for (i, (key, value)) in pairs.iter().enumerate() {
            let separator = if i == 0 { "" } else { ", " };
            let _ = write!(text, "{separator}{key}: {}", quote(value));
        }
        text.trim().to_string()
    }

    /// Reads a `parameters` text. Fails, naming the key and value, when the parameter line is missing, a
    /// required key (Steps, Sampler, CFG scale, Seed, Size) is absent, or a value does not parse.
    pub fn parse(text: &str) -> Result<GenerationParameters> {
        let mut lines: Vec<&str> = text.trim().split('\n').collect();
        let last = lines.pop().unwrap_or_default();
        if PARAM.captures_iter(last).count() < 3 {
            return Err(Error::invalid(
                "generation parameters",
                "no parameter line: the last line must hold at least three `Key: value` pairs",
            ));
        }

        let mut params = GenerationParameters::default();
        let mut in_negative = false;
        for line in lines {
            let mut line = line.trim();
            if let Some(rest) = line.strip_prefix(NEGATIVE_PROMPT) {
                in_negative = true;
                line = rest.trim();
            }
            let target = if in_negative {
                &mut params.negative_prompt
            } else {
                &mut params.prompt
            };
            if !target.is_empty() {
                target.push('\n');
            }
            target.push_str(line);
        }

        let (mut steps, mut sampler, mut cfg_scale, mut seed, mut size) =
            (None, None, None, None, None);
        for captures in PARAM.captures_iter(last) {
            let key = &captures[1];
            let raw = &captures[2];
            // A1111 skips a pair whose value is empty.
            if raw.is_empty() {
                continue;
            }
            let value = unquote(raw);
            match key {
                "Steps" => steps = Some(parse_number::<u32>(key, &value)?),
                "Sampler" => sampler = Some(value),
                "Schedule type" => params.schedule_type = Some(value),
                "CFG scale" => cfg_scale = Some(parse_finite(key, &value)?),
                "Seed" => seed = Some(parse_number::<u64>(key, &value)?),
                "Size" => size = Some(parse_size(&value)?),
                "Model hash" => params.model_hash = Some(value),
                "Model" => params.model = Some(value),
                "Denoising strength" => {
                    params.denoising_strength = Some(parse_finite(key, &value)?)
                }
                "Clip skip" => params.clip_skip = Some(parse_number::<u32>(key, &value)?),
                "RNG" => params.rng = RngSource::from_value(&value)?,
                _ => match params.extra.iter_mut().find(|(k, _)| k == key) {
                    Some(existing) => existing.1 = value,
                    None => params.extra.push((key.to_string(), value)),
                },
            }
        }
        params.steps = steps.ok_or_else(|| missing("Steps"))?;
        params.sampler = sampler.ok_or_else(|| missing("Sampler"))?;
        params.cfg_scale = cfg_scale.ok_or_else(|| missing("CFG scale"))?;
        params.seed = seed.ok_or_else(|| missing("Seed"))?;
        (params.width, params.height) = size.ok_or_else(|| missing("Size"))?;
        Ok(params)
    }
}

/// A1111's `quote`: a value holding `,`, `:` or a newline becomes a JSON string. So does an empty value, which
/// A1111 writes bare and its reader then drops; `""` reads back as the empty string there too.
fn quote(value: &str) -> String {
    if value.is_empty() || value.contains([',', ':', '\n']) {
        serde_json::Value::from(value).to_string()
    } else {
        value.to_string()
    }
}

/// A1111's `unquote`: a value in double quotes is read as a JSON string, left as it is if that fails.
fn unquote(value: &str) -> String {
    if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
        if let Ok(text) = serde_json::from_str::<String>(value) {
            return text;
        }
    }
    value.to_string()
}

fn parse_number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T> {
    value
        .trim()
        .parse()
        .map_err(|_| bad_value(key, value, "a whole number"))
}

fn parse_finite(key: &str, value: &str) -> Result<f64> {
    match value.trim().parse::<f64>() {
        Ok(number) if number.is_finite() => Ok(number),
        _ => Err(bad_value(key, value, "a finite number")),
    }
}

fn parse_size(value: &str) -> Result<(u32, u32)> {
    let parsed = value
        .trim()
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)));
    parsed.ok_or_else(|| bad_value("Size", value, "WIDTHxHEIGHT, e.g. 512x768"))
}

fn bad_value(key: &str, value: &str, expected: &str) -> Error {
    Error::invalid(
        "generation parameters",
        format!("`{key}: {value}`: expected {expected}"),
    )
}

fn missing(key: &str) -> Error {
    Error::invalid(
        "generation parameters",
        format!("the parameter line has no `{key}`"),
    )
}

/// Formats a float as Python's `str(float)` does, which is what A1111 writes: shortest round-trip digits,
/// always a decimal point or an exponent, exponent form below 1e-4 and from 1e16 on (`7.0`, `0.75`, `1e-05`).
fn python_float(value: f64) -> String {
    if !value.is_finite() {
        return match (value.is_nan(), value > 0.0) {
            (true, _) => "nan".to_string(),
            (false, true) => "inf".to_string(),
            (false, false) => "-inf".to_string(),
        };
    }
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if value != 0.0 && !(-4..16).contains(&exponent) {
        let sign = if exponent < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exponent.abs());
    }
    let plain = format!("{value}");
    if plain.contains('.') {
        plain
    } else {
        format!("{plain}.0")
    }
}

#[cfg(test)]
mod tests {
    use super::python_float;

    #[test]
    fn floats_are_written_as_python_writes_them() {
        let cases = [
            (7.0, "7.0"),
            (7.5, "7.5"),
            (0.75, "0.75"),
            (0.1, "0.1"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
            (123.456, "123.456"),
        ];
        for (value, expected) in cases {
            assert_eq!(python_float(value), expected, "{value}");
        }
    }
}
