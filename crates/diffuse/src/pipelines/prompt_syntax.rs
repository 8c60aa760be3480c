//! AUTOMATIC1111's prompt syntax, implemented from its documented behaviour: `(text)` multiplies the weight of
//! its text by 1.1, `[text]` divides it by 1.1, `(text:1.3)` sets a factor, brackets nest (factors multiply),
//! `\(`, `\)`, `\[`, `\]` and `\\` are literal, an unclosed bracket applies to the rest of the prompt, an
//! unmatched closing one is text, and a whole-word `BREAK` starts a new 75-token chunk. `<lora:NAME:W>` tags
//! are taken out of the text first.

use super::request::RequestField;
use crate::{Error, Result};

/// The factor of one pair of round brackets (square brackets divide by it).
const BRACKET_FACTOR: f64 = 1.1;

/// A piece of a parsed prompt.
#[derive(Clone, Debug, PartialEq)]
pub enum Piece {
    /// Text and its weight.
    Text(String, f64),
    /// `BREAK`: the current chunk ends here.
    Break,
}

/// An `<lora:NAME:W>` or `<lora:NAME:W_TE:W_UNET>` tag.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraTag {
    /// The LoRA's name (its file stem).
    pub name: String,
    /// The weight on the text encoder.
    pub text_encoder_weight: f64,
    /// The weight on the UNet.
    pub unet_weight: f64,
}

/// A prompt after parsing: the weighted text and the LoRA tags taken out of it.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedPrompt {
    /// Text pieces with their weights, consecutive pieces of equal weight merged; never empty.
    pub pieces: Vec<Piece>,
    /// The LoRA tags, in order.
    pub loras: Vec<LoraTag>,
}

impl ParsedPrompt {
    /// Parses `prompt` with A1111's syntax.
    pub fn parse(prompt: &str) -> Result<Self> {
        let (text, loras) = take_lora_tags(prompt)?;
        Ok(Self {
            pieces: attention(&text),
            loras,
        })
    }

    /// `prompt` as one piece of weight 1 (the syntax turned off).
    pub fn plain(prompt: &str) -> Self {
        Self {
            pieces: vec![Piece::Text(prompt.to_string(), 1.0)],
            loras: Vec::new(),
        }
    }
}

/// Takes the `<lora:…>` (and LyCORIS's `<lyco:…>`) tags out of `prompt`.
fn take_lora_tags(prompt: &str) -> Result<(String, Vec<LoraTag>)> {
    let mut text = String::with_capacity(prompt.len());
    let mut loras = Vec::new();
    let mut rest = prompt;
    while let Some(start) = rest.find('<') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('>') else { break };
        let inner = &after[..end];
        let Some((kind, args)) = inner.split_once(':') else {
            text.push_str(&rest[..start + 1]);
            rest = after;
            continue;
        };
        if !matches!(kind, "lora" | "lyco") {
            text.push_str(&rest[..start + 1]);
            rest = after;
            continue;
        }
        text.push_str(&rest[..start]);
        loras.push(lora_tag(inner, args)?);
        rest = &after[end + 1..];
    }
    text.push_str(rest);
    Ok((text, loras))
}

fn lora_tag(tag: &str, args: &str) -> Result<LoraTag> {
    let fields: Vec<&str> = args.split(':').map(str::trim).collect();
    let bad = |why: String| Error::invalid(RequestField::Prompt.name(), format!("<{tag}>: {why}"));
    let name = fields[0];
    if name.is_empty() {
        return Err(bad("the LoRA's name is missing".into()));
    }
    let weight = |i: usize| -> Result<Option<f64>> {
        match fields.get(i) {
            None => Ok(None),
            Some(text) => match text.parse::<f64>() {
                Ok(w) if w.is_finite() => Ok(Some(w)),
                _ => Err(bad(format!("weight {text:?} is not a finite number"))),
            },
        }
    };
    if fields.len() > 3 {
        return Err(bad(
            "expected <lora:NAME:W> or <lora:NAME:W_TE:W_UNET>".into()
        ));
    }
    let te = weight(1)?.unwrap_or(1.0);
    let unet = weight(2)?.unwrap_or(te);
    Ok(LoraTag {
        name: name.to_string(),
        text_encoder_weight: te,
        unet_weight: unet,
    })
}

/// The lexical pieces of the attention syntax.
enum Lexeme<'a> {
    Literal(char),
    Open(char),
    CloseRound,
    CloseSquare,
    /// `:NUMBER)` (the number as written).
    WeightClose(&'a str),
    Text(&'a str),
}

fn lex(text: &str) -> Vec<Lexeme<'_>> {
    let mut out = Vec::new();
    let mut i = 0;
    let bytes = text.as_bytes();
    while i < text.len() {
        let c = bytes[i];
        match c {
            b'\\' => {
                match bytes.get(i + 1) {
                    Some(&n @ (b'(' | b')' | b'[' | b']' | b'\\')) => {
                        out.push(Lexeme::Literal(n as char));
                        i += 2;
                    }
                    _ => {
                        out.push(Lexeme::Literal('\\'));
                        i += 1;
                    }
                }
                continue;
            }
            b'(' | b'[' => out.push(Lexeme::Open(c as char)),
            b')' => out.push(Lexeme::CloseRound),
            b']' => out.push(Lexeme::CloseSquare),
            b':' => {
                // `:` spaces, a number of signs, digits and dots, spaces, `)`.
                let rest = &text[i + 1..];
                let trimmed = rest.trim_start();
                let number_len = trimmed
                    .char_indices()
                    .take_while(|&(k, ch)| {
                        ch.is_ascii_digit() || ch == '.' || (k == 0 && (ch == '+' || ch == '-'))
                    })
                    .count();
                let number = &trimmed[..number_len];
                let after = trimmed[number_len..].trim_start();
                if number.chars().any(|ch| ch.is_ascii_digit() || ch == '.')
                    && after.starts_with(')')
                {
                    out.push(Lexeme::WeightClose(number));
                    i = text.len() - after.len() + 1;
                    continue;
                }
                out.push(Lexeme::Text(":"));
            }
            _ => {
                let end = text[i..]
                    .find(['\\', '(', ')', '[', ']', ':'])
                    .map_or(text.len(), |k| i + k);
                out.push(Lexeme::Text(&text[i..end]));
                i = end;
                continue;
            }
        }
        i += 1;
    }
    out
}

/// A1111's attention parsing: text pieces with their weights, BREAK markers, equal weights merged.
fn attention(text: &str) -> Vec<Piece> {
    let mut pieces: Vec<(String, f64)> = Vec::new();
    // BREAK markers are kept as pieces with weight -1, as they must not merge.
    const BREAK: f64 = -1.0;
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let multiply = |pieces: &mut Vec<(String, f64)>, from: usize, factor: f64| {
        for piece in &mut pieces[from..] {
            if piece.1 != BREAK {
                piece.1 *= factor;
            }
        }
    };
    let push_text = |pieces: &mut Vec<(String, f64)>, text: &str| {
        for (k, part) in split_breaks(text).into_iter().enumerate() {
            if k > 0 {
                pieces.push(("BREAK".into(), BREAK));
            }
            pieces.push((part.to_string(), 1.0));
        }
    };
    for lexeme in lex(text) {
        match lexeme {
            Lexeme::Literal(c) => pieces.push((c.to_string(), 1.0)),
            Lexeme::Open('(') => round.push(pieces.len()),
            Lexeme::Open(_) => square.push(pieces.len()),
            Lexeme::WeightClose(number) if !round.is_empty() => match number.parse::<f64>() {
                Ok(w) => {
                    let from = round.pop().unwrap_or(0);
                    multiply(&mut pieces, from, w);
                }
                Err(_) => push_text(&mut pieces, &format!(":{number})")),
            },
            Lexeme::WeightClose(number) => push_text(&mut pieces, &format!(":{number})")),
            Lexeme::CloseRound => match round.pop() {
                Some(from) => multiply(&mut pieces, from, BRACKET_FACTOR),
                None => pieces.push((")".into(), 1.0)),
            },
            Lexeme::CloseSquare => match square.pop() {
                Some(from) => multiply(&mut pieces, from, 1.0 / BRACKET_FACTOR),
                None => pieces.push(("]".into(), 1.0)),
            },
            Lexeme::Text(t) => push_text(&mut pieces, t),
        }
    }
    for from in round {
        multiply(&mut pieces, from, BRACKET_FACTOR);
    }
    for from in square {
        multiply(&mut pieces, from, 1.0 / BRACKET_FACTOR);
    }
    let mut merged: Vec<Piece> = Vec::new();
    for (text, weight) in pieces {
        if weight == BREAK {
            merged.push(Piece::Break);
            continue;
        }
        match merged.last_mut() {
            Some(Piece::Text(last, w)) if *w == weight => last.push_str(&text),
            _ => merged.push(Piece::Text(text, weight)),
        }
    }
    merged.retain(|p| !matches!(p, Piece::Text(t, _) if t.is_empty()));
    if merged.is_empty() {
        merged.push(Piece::Text(String::new(), 1.0));
    }
    merged
}

/// `text` split at whole-word `BREAK`s, the whitespace around each taken with it.
fn split_breaks(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut search = 0;
    while let Some(k) = text[search..].find("BREAK") {
        let at = search + k;
        let end = at + "BREAK".len();
        let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        if word(text[..at].chars().next_back()) || word(text[end..].chars().next()) {
            search = end;
            continue;
        }
        parts.push(text[start..at].trim_end());
        start = end + (text[end..].len() - text[end..].trim_start().len());
        search = start;
    }
    parts.push(&text[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(prompt: &str) -> Vec<(String, f64)> {
        ParsedPrompt::parse(prompt)
            .unwrap()
            .pieces
            .into_iter()
            .map(|p| match p {
                Piece::Text(t, w) => (t, w),
                Piece::Break => ("BREAK".into(), -1.0),
            })
            .collect()
    }

    fn pieces(expected: &[(&str, f64)]) -> Vec<(String, f64)> {
        expected.iter().map(|(t, w)| (t.to_string(), *w)).collect()
    }

    /// The examples of A1111's documentation of its prompt parser.
    #[test]
    fn a1111_documented_examples() {
        assert_eq!(parsed("normal text"), pieces(&[("normal text", 1.0)]));
        assert_eq!(
            parsed("an (important) word"),
            pieces(&[("an ", 1.0), ("important", 1.1), (" word", 1.0)])
        );
        assert_eq!(parsed("(unbalanced"), pieces(&[("unbalanced", 1.1)]));
        assert_eq!(parsed("\\(literal\\]"), pieces(&[("(literal]", 1.0)]));
        assert_eq!(
            parsed("(unnecessary)(parens)"),
            pieces(&[("unnecessaryparens", 1.1)])
        );
        // Weights as A1111's documentation lists them (multiplied in the order brackets close).
        assert_eq!(
            parsed("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."),
            pieces(&[
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ])
        );
        assert_eq!(
            parsed("a BREAK b BREAKfast"),
            vec![
                ("a".into(), 1.0),
                ("BREAK".into(), -1.0),
                ("b BREAKfast".into(), 1.0)
            ]
        );
        assert_eq!(parsed(""), pieces(&[("", 1.0)]));
        // Colons without a weight, and closing brackets without an opening one, are text.
        assert_eq!(
            parsed("a: b :c) (d:x)"),
            pieces(&[("a: b :c) ", 1.0), ("d:x", 1.1)])
        );
        assert_eq!(parsed("x:1.5) y"), pieces(&[("x:1.5) y", 1.0)]));
    }

    #[test]
    fn lora_tags_are_taken_out() {
        let p = ParsedPrompt::parse("a cat <lora:film:0.8>, <lora:detail:0.5:1.2><lora:plain> <b>")
            .unwrap();
        assert_eq!(p.pieces, vec![Piece::Text("a cat ,  <b>".into(), 1.0)]);
        assert_eq!(
            p.loras,
            vec![
                LoraTag {
                    name: "film".into(),
                    text_encoder_weight: 0.8,
                    unet_weight: 0.8
                },
                LoraTag {
                    name: "detail".into(),
                    text_encoder_weight: 0.5,
                    unet_weight: 1.2
                },
                LoraTag {
                    name: "plain".into(),
                    text_encoder_weight: 1.0,
                    unet_weight: 1.0
                },
            ]
        );
        for bad in [
            "<lora::1>",
            "<lora:x:nan>",
            "<lora:x:1:2:3>",
            "<lora:x:big>",
        ] {
            let e = ParsedPrompt::parse(bad).unwrap_err().to_string();
            assert!(e.contains(&bad[1..bad.len() - 1]), "{bad}: {e}");
        }
    }

    #[test]
    fn odd_prompts_never_panic() {
        let alphabet = [
            '(', ')', '[', ']', ':', '\\', '<', '>', '1', '.', '-', 'é', ' ', 'a', 'B',
        ];
        let mut state = 7u64;
        for _ in 0..2000 {
            let len = (state % 24) as usize;
            let text: String = (0..len)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    alphabet[(state >> 33) as usize % alphabet.len()]
                })
                .collect();
            if let Ok(parsed) = ParsedPrompt::parse(&text) {
                assert!(!parsed.pieces.is_empty(), "{text:?}");
            }
            let _ = ParsedPrompt::parse(&format!("{text} BREAK {text} <lora:{text}:1>"));
        }
    }
}
