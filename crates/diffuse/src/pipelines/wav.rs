//! WAV files of generated audio: mono 32-bit float samples, exactly the pipeline's waveform (what
//! `scipy.io.wavfile.write` writes for diffusers' float32 output), with the generation parameters in a
//! `LIST`/`INFO` chunk's `ICMT` (comment) field, where audio tools show a file's comment.

use std::path::Path;

use crate::{Error, Result};

const FORMAT_IEEE_FLOAT: u16 = 3;

/// A decoded WAV file.
#[derive(Debug, Clone, PartialEq)]
pub struct Wav {
    /// Samples per second.
    pub sample_rate: u32,
    /// The first channel's samples, as floats in [-1, 1].
    pub samples: Vec<f32>,
    /// The `ICMT` comment: the generation parameters, when diffuse wrote them.
    pub comment: Option<String>,
}

fn chunk(id: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 9);
    out.extend_from_slice(id);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    if body.len() % 2 == 1 {
        out.push(0);
    }
    out
}

/// Encodes `samples` (mono) at `sample_rate` as a 32-bit float WAV, with `comment` in its INFO chunk.
pub fn encode_wav(samples: &[f32], sample_rate: u32, comment: Option<&str>) -> Vec<u8> {
    let mut fmt = Vec::with_capacity(16);
    fmt.extend_from_slice(&FORMAT_IEEE_FLOAT.to_le_bytes());
    fmt.extend_from_slice(&1u16.to_le_bytes());
    fmt.extend_from_slice(&sample_rate.to_le_bytes());
    fmt.extend_from_slice(&(sample_rate * 4).to_le_bytes());
    fmt.extend_from_slice(&4u16.to_le_bytes());
    fmt.extend_from_slice(&32u16.to_le_bytes());
    let mut body = b"WAVE".to_vec();
    body.extend(chunk(b"fmt ", &fmt));
    // Float WAVs carry the sample count in a `fact` chunk.
    body.extend(chunk(b"fact", &(samples.len() as u32).to_le_bytes()));
    if let Some(text) = comment {
        let mut info = b"INFO".to_vec();
        let mut value = text.as_bytes().to_vec();
        value.push(0);
        info.extend(chunk(b"ICMT", &value));
        body.extend(chunk(b"LIST", &info));
    }
    let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    body.extend(chunk(b"data", &data));
    chunk(b"RIFF", &body)
}

/// Writes [`encode_wav`]'s bytes to `path`.
pub fn write_wav(
    path: &Path,
    samples: &[f32],
    sample_rate: u32,
    comment: Option<&str>,
) -> Result<()> {
    std::fs::write(path, encode_wav(samples, sample_rate, comment)).map_err(|cause| Error::Io {
        path: path.to_path_buf(),
        cause,
    })
}

/// Whether `bytes` start as a WAV file.
pub fn is_wav(bytes: &[u8]) -> bool {
    bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WAVE")
}

/// Decodes a WAV file: 32-bit float or 16-bit PCM samples (the first channel), and its INFO comment.
pub fn decode_wav(bytes: &[u8]) -> Result<Wav> {
    let bad = |message: &str| Error::invalid("wav", message.to_string());
    if !is_wav(bytes) {
        return Err(bad("not a WAV file (no RIFF/WAVE header)"));
    }
    let mut format: Option<(u16, u16, u32, u16)> = None;
    let mut comment = None;
    let mut data: Option<&[u8]> = None;
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let size = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]])
            as usize;
        let start = at + 8;
        let end = start
            .checked_add(size)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| bad("a chunk runs past the end of the file"))?;
        let body = &bytes[start..end];
        match id {
            b"fmt " if body.len() >= 16 => {
                let u16_at = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
                let rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
                format = Some((u16_at(0), u16_at(2), rate, u16_at(14)));
            }
            b"LIST" if body.starts_with(b"INFO") => comment = info_comment(&body[4..]).or(comment),
            b"data" => data = Some(body),
            _ => {}
        }
        at = end + size % 2;
    }
    let (code, channels, sample_rate, bits) = format.ok_or_else(|| bad("no fmt chunk"))?;
    let data = data.ok_or_else(|| bad("no data chunk"))?;
    let channels = usize::from(channels.max(1));
    let samples = match (code, bits) {
        (FORMAT_IEEE_FLOAT, 32) => data
            .chunks_exact(4 * channels)
            .map(|frame| f32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]))
            .collect(),
        (1, 16) => data
            .chunks_exact(2 * channels)
            .map(|frame| f32::from(i16::from_le_bytes([frame[0], frame[1]])) / 32768.0)
            .collect(),
        _ => {
            return Err(bad(&format!(
                "format {code} with {bits} bits: expected 32-bit float or 16-bit PCM"
            )))
        }
    };
    Ok(Wav {
        sample_rate,
        samples,
        comment,
    })
}

fn info_comment(mut info: &[u8]) -> Option<String> {
    while info.len() >= 8 {
        let size = u32::from_le_bytes([info[4], info[5], info[6], info[7]]) as usize;
        let value = info.get(8..8 + size)?;
        if &info[..4] == b"ICMT" {
            let text = value.split(|&b| b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        info = info.get(8 + size + size % 2..)?;
    }
    None
}

/// Reads the generation parameters of the WAV file at `path`, if it has them.
pub fn read_wav_parameters(path: &Path) -> Result<Option<String>> {
    let bytes = std::fs::read(path).map_err(|cause| Error::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    decode_wav(&bytes)
        .map(|wav| wav.comment)
        .map_err(|e| match e {
            Error::InvalidArgument { name, message } => {
                Error::invalid(name, format!("{}: {message}", path.display()))
            }
            other => other,
        })
}
