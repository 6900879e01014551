//! Helpers shared by the fuzz targets (docs/fuzzing.md).

use serde_json::Value;

/// A bundle as a target reads it from the fuzzer's bytes: the first line is the value of
/// `Frame-Types`, the second the value of `Frame-First-Seq` (an empty line: the header is absent),
/// the rest the payload. Seeds stay plain text files.
pub struct BundleInput<'a> {
    pub frame_types: Option<&'a str>,
    pub first_seq: Option<&'a str>,
    pub payload: &'a [u8],
}

impl<'a> BundleInput<'a> {
    pub fn split(data: &'a [u8]) -> Self {
        let mut parts = data.splitn(3, |byte| *byte == b'\n');
        let header = |line: Option<&'a [u8]>| {
            line.filter(|line| !line.is_empty())
                .and_then(|line| std::str::from_utf8(line).ok())
        };
        let frame_types = header(parts.next());
        let first_seq = header(parts.next());
        Self {
            frame_types,
            first_seq,
            payload: parts.next().unwrap_or_default(),
        }
    }
}

/// JSON equality with floats compared to a relative 1e-12: serde_json (without its
/// `float_roundtrip` feature) may read back the last bit of a float it wrote differently, which is
/// not a bug of the code under test.
pub fn json_close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x == y {
                return true;
            }
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => {
                    let scale = x.abs().max(y.abs()).max(f64::MIN_POSITIVE);
                    ((x - y).abs() / scale) <= 1e-12
                }
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_close(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(key, x)| y.get(key).is_some_and(|y| json_close(x, y)))
        }
        _ => a == b,
    }
}
