//! JSON as Python's `json` module reads and writes it, the dialect of every file diffusers and transformers
//! save: standard JSON plus the literals `NaN`, `Infinity` and `-Infinity` wherever a number may stand
//! (`json.dumps` writes them for non-finite floats, such as `DPMSolverMultistepScheduler`'s default
//! `lambda_min_clipped = -inf`). What `json.loads` refuses is refused here too: trailing commas, comments,
//! single quotes, control characters inside strings, a leading byte-order mark, anything after the value.
//! As in a Python dict, a repeated key keeps its last value.
//!
//! The text is parsed into a [`PyValue`] tree, which is itself a serde `Deserializer`, so the config structs
//! deserialize from it exactly as they would from `serde_json` (and `serde_json::Value` fields still work;
//! a non-finite number there becomes `null`, as serde_json has no such number).

use std::collections::HashMap;

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::forward_to_deserialize_any;

/// A parsed JSON value, numbers kept as the Python reader types them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PyValue {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An integer that fits in 64 bits (negative ones as `Int`).
    UInt(u64),
    /// A negative integer that fits in 64 bits.
    Int(i64),
    /// Any other number: a fraction, an exponent, a larger integer, `NaN` or an infinity.
    Float(f64),
    /// A string.
    String(String),
    /// A list.
    Array(Vec<PyValue>),
    /// An object's entries in order, each key once (the last value of a repeated key).
    Object(Vec<(String, PyValue)>),
}

/// A syntax error: what was expected, with the 1-based line and column.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SyntaxError {
    pub message: String,
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at line {} column {}",
            self.message, self.line, self.column
        )
    }
}

/// Parses `text` as one JSON document in Python's dialect.
pub(crate) fn parse(text: &str) -> Result<PyValue, SyntaxError> {
    let mut parser = Parser {
        text: text.as_bytes(),
        pos: 0,
    };
    if text.starts_with('\u{feff}') {
        return Err(parser.error("unexpected UTF-8 byte-order mark (Python's json refuses it)"));
    }
    parser.skip_whitespace();
    let value = parser.value(0)?;
    parser.skip_whitespace();
    if parser.pos < parser.text.len() {
        return Err(parser.error("extra data after the JSON value"));
    }
    Ok(value)
}

/// Nesting deeper than this is refused rather than risking the stack (Python's limit is about 1000 too).
const MAX_DEPTH: usize = 512;

struct Parser<'a> {
    text: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, message: impl Into<String>) -> SyntaxError {
        let before = &self.text[..self.pos.min(self.text.len())];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&before[line_start..])
            .chars()
            .count()
            + 1;
        SyntaxError {
            message: message.into(),
            line,
            column,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn eat_literal(&mut self, literal: &str) -> bool {
        if self.text[self.pos..].starts_with(literal.as_bytes()) {
            self.pos += literal.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<PyValue, SyntaxError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        match self.peek() {
            None => Err(self.error("expected a value, found the end of the text")),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().map(PyValue::String),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => {
                for (literal, value) in [
                    ("null", PyValue::Null),
                    ("true", PyValue::Bool(true)),
                    ("false", PyValue::Bool(false)),
                    ("NaN", PyValue::Float(f64::NAN)),
                    ("Infinity", PyValue::Float(f64::INFINITY)),
                ] {
                    if self.eat_literal(literal) {
                        return Ok(value);
                    }
                }
                Err(self.error("expected a value"))
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<PyValue, SyntaxError> {
        self.pos += 1;
        let mut entries: Vec<(String, PyValue)> = Vec::new();
        let mut positions: HashMap<String, usize> = HashMap::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(PyValue::Object(entries));
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a key in double quotes"));
            }
            let key = self.string()?;
            self.skip_whitespace();
            if self.peek() != Some(b':') {
                return Err(self.error("expected ':' after the key"));
            }
            self.pos += 1;
            self.skip_whitespace();
            let value = self.value(depth + 1)?;
            match positions.get(&key) {
                Some(&at) => entries[at].1 = value,
                None => {
                    positions.insert(key.clone(), entries.len());
                    entries.push((key, value));
                }
            }
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(PyValue::Object(entries));
                }
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<PyValue, SyntaxError> {
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(PyValue::Array(items));
        }
        loop {
            self.skip_whitespace();
            items.push(self.value(depth + 1)?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(PyValue::Array(items));
                }
                _ => return Err(self.error("expected ',' or ']'")),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?`, or `-Infinity`.
    fn number(&mut self) -> Result<PyValue, SyntaxError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
            if self.eat_literal("Infinity") {
                return Ok(PyValue::Float(f64::NEG_INFINITY));
            }
        }
        let int_start = self.pos;
        let int_digits = self.digits();
        if int_digits == 0 {
            return Err(self.error("expected a digit"));
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.error("expected a digit after the decimal point"));
            }
            integer = false;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.error("expected a digit in the exponent"));
            }
            integer = false;
        }
        // As Python's scanner: a leading zero ends the number, so "01" is 0 followed by extra data.
        if int_digits > 1 && self.text[int_start] == b'0' {
            self.pos = int_start + 1;
            return Err(
                self.error("extra data after the JSON value (a number with a leading zero)")
            );
        }
        let literal = std::str::from_utf8(&self.text[start..self.pos])
            .map_err(|_| self.error("invalid number"))?;
        if integer {
            if let Ok(value) = literal.parse::<u64>() {
                return Ok(PyValue::UInt(value));
            }
            if let Ok(value) = literal.parse::<i64>() {
                return Ok(PyValue::Int(value));
            }
        }
        // Overflow gives an infinity, as Python's float() does.
        literal
            .parse::<f64>()
            .map(PyValue::Float)
            .map_err(|_| self.error("invalid number"))
    }

    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let digits = self
            .text
            .get(self.pos..self.pos + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| self.error("expected four hex digits after \\u"))?;
        let value =
            u32::from_str_radix(digits, 16).map_err(|_| self.error("invalid \\u escape"))?;
        self.pos += 4;
        Ok(value)
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            let run_start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            let run = std::str::from_utf8(&self.text[run_start..self.pos])
                .map_err(|_| self.error("invalid UTF-8 in a string"))?;
            out.push_str(run);
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let escaped = self
                        .peek()
                        .ok_or_else(|| self.error("unterminated string"))?;
                    self.pos += 1;
                    match escaped {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => out.push(self.unicode_escape()?),
                        _ => {
                            self.pos -= 1;
                            return Err(self.error("invalid escape in a string"));
                        }
                    }
                }
                Some(_) => return Err(self.error("control character inside a string")),
            }
        }
    }

    /// The character of a `\uXXXX` escape (after the `u`), joining a surrogate pair.
    fn unicode_escape(&mut self) -> Result<char, SyntaxError> {
        let first = self.hex4()?;
        let code = if (0xD800..0xDC00).contains(&first) && self.eat_literal("\\u") {
            let second = self.hex4()?;
            if !(0xDC00..0xE000).contains(&second) {
                return Err(self.error("a high surrogate not followed by a low surrogate"));
            }
            0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
        } else {
            first
        };
        char::from_u32(code).ok_or_else(|| self.error("a lone surrogate in a \\u escape"))
    }
}

type DeError = de::value::Error;

impl<'de> de::Deserializer<'de> for &'de PyValue {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self {
            PyValue::Null => visitor.visit_unit(),
            PyValue::Bool(b) => visitor.visit_bool(*b),
            PyValue::UInt(n) => visitor.visit_u64(*n),
            PyValue::Int(n) => visitor.visit_i64(*n),
            PyValue::Float(x) => visitor.visit_f64(*x),
            PyValue::String(s) => visitor.visit_borrowed_str(s),
            PyValue::Array(items) => visitor.visit_seq(Items(items.iter())),
            PyValue::Object(entries) => visitor.visit_map(Entries {
                entries: entries.iter(),
                value: None,
            }),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self {
            PyValue::Null => visitor.visit_none(),
            other => visitor.visit_some(other),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match self {
            PyValue::String(s) => visitor.visit_enum(s.as_str().into_deserializer()),
            other => Err(de::Error::invalid_type(other.unexpected(), &"a string")),
        }
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit
        unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

impl PyValue {
    fn unexpected(&self) -> de::Unexpected<'_> {
        match self {
            PyValue::Null => de::Unexpected::Unit,
            PyValue::Bool(b) => de::Unexpected::Bool(*b),
            PyValue::UInt(n) => de::Unexpected::Unsigned(*n),
            PyValue::Int(n) => de::Unexpected::Signed(*n),
            PyValue::Float(x) => de::Unexpected::Float(*x),
            PyValue::String(s) => de::Unexpected::Str(s),
            PyValue::Array(_) => de::Unexpected::Seq,
            PyValue::Object(_) => de::Unexpected::Map,
        }
    }
}

struct Items<'de>(std::slice::Iter<'de, PyValue>);

impl<'de> SeqAccess<'de> for Items<'de> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        self.0.next().map(|item| seed.deserialize(item)).transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct Entries<'de> {
    entries: std::slice::Iter<'de, (String, PyValue)>,
    value: Option<&'de PyValue>,
}

impl<'de> MapAccess<'de> for Entries<'de> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match self.entries.next() {
            Some((key, value)) => {
                self.value = Some(value);
                let key: de::value::BorrowedStrDeserializer<'de, DeError> =
                    de::value::BorrowedStrDeserializer::new(key);
                seed.deserialize(key).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let value = self
            .value
            .take()
            .ok_or_else(|| <DeError as de::Error>::custom("a value asked for before its key"))?;
        seed.deserialize(value)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    fn value(text: &str) -> PyValue {
        parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    #[test]
    fn reads_pythons_non_finite_literals() {
        assert_eq!(
            value("[NaN, Infinity, -Infinity, -1.5e3, 1e400, 7, -7]").to_string_for_test(),
            "[NaN, inf, -inf, -1500, inf, 7u, -7i]"
        );
    }

    #[test]
    fn refuses_what_pythons_json_refuses() {
        for text in [
            "[1, 2,]",
            "{\"a\": 1,}",
            "{'a': 1}",
            "[1] // comment",
            "\u{feff}{}",
            "[01]",
            "[1.]",
            "[.5]",
            "[+1]",
            "[-]",
            "[nan]",
            "[inf]",
            "[-NaN]",
            "\"tab\there\"",
            "\"\\x41\"",
            "{} {}",
            "",
            "[\"\\ud800\"]",
        ] {
            assert!(parse(text).is_err(), "{text:?} was accepted");
        }
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let e = parse("{\n  \"a\": 1,\n  \"b\": tru\n}").unwrap_err();
        assert_eq!((e.line, e.column), (3, 8), "{e}");
    }

    #[test]
    fn strings_unescape_and_repeated_keys_keep_the_last_value() {
        assert_eq!(
            value(r#"{"k": "a\"\\\/\n\u00e9\ud83d\ude00", "d": 1, "d": 2}"#),
            PyValue::Object(vec![
                ("k".into(), PyValue::String("a\"\\/\né😀".into())),
                ("d".into(), PyValue::UInt(2)),
            ])
        );
    }

    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        Epsilon,
        VPrediction,
    }

    #[derive(Deserialize, Debug, PartialEq)]
    struct Config {
        lambda_min_clipped: f64,
        maybe: Option<f32>,
        absent: Option<u32>,
        kind: Kind,
        list: Vec<u32>,
        any: serde_json::Value,
    }

    #[test]
    fn deserializes_config_structs() {
        let parsed = value(
            r#"{"lambda_min_clipped": -Infinity, "maybe": null, "kind": "v_prediction",
                "list": [1, 2], "any": {"x": [NaN, 1.5]}, "extra": true}"#,
        );
        let config = Config::deserialize(&parsed).unwrap();
        assert_eq!(config.lambda_min_clipped, f64::NEG_INFINITY);
        assert_eq!(config.maybe, None);
        assert_eq!(config.absent, None);
        assert_eq!(config.kind, Kind::VPrediction);
        assert_eq!(config.list, vec![1, 2]);
        assert_eq!(config.any, serde_json::json!({"x": [null, 1.5]}));
        assert!(config.kind != Kind::Epsilon);
    }

    impl PyValue {
        fn to_string_for_test(&self) -> String {
            match self {
                PyValue::Float(x) if x.is_nan() => "NaN".into(),
                PyValue::Float(x) => format!("{x}"),
                PyValue::UInt(n) => format!("{n}u"),
                PyValue::Int(n) => format!("{n}i"),
                PyValue::Array(items) => format!(
                    "[{}]",
                    items
                        .iter()
                        .map(PyValue::to_string_for_test)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                other => format!("{other:?}"),
            }
        }
    }
}
