//! Strict `application/x-www-form-urlencoded` parsing.
//!
//! Follows the WHATWG URL parsing algorithm (`+` is a space, a stray `%` is
//! kept literally, a name without `=` has an empty value) but, unlike most
//! parsers, refuses invalid UTF-8 instead of replacing it: the draft requires
//! UTF-8 names and values, and silently rewriting a topic would route an
//! update somewhere its publisher did not ask for.

use percent_encoding::percent_decode;

/// Why a form could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    /// A name or value decoded to bytes that are not UTF-8.
    #[error("form field {0:?} is not valid UTF-8")]
    InvalidUtf8(String),
}

/// Parses `input` into ordered name/value pairs.
pub fn parse(input: &[u8]) -> Result<Vec<(String, String)>, FormError> {
    let mut pairs = Vec::new();
    for part in input.split(|&b| b == b'&') {
        if part.is_empty() {
            continue;
        }
        let (name, value) = match part.iter().position(|&b| b == b'=') {
            Some(i) => (&part[..i], &part[i + 1..]),
            None => (part, &[][..]),
        };
        let name = decode(name).map_err(|_| FormError::InvalidUtf8(lossy(name)))?;
        let value = decode(value).map_err(|_| FormError::InvalidUtf8(name.clone()))?;
        pairs.push((name, value));
    }
    Ok(pairs)
}

fn decode(raw: &[u8]) -> Result<String, std::string::FromUtf8Error> {
    let plus_as_space: Vec<u8> = raw
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    String::from_utf8(percent_decode(&plus_as_space).collect())
}

fn lossy(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

/// Percent-encodes a value for a form (the `URLSearchParams` serializer).
pub fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_like_url_search_params() {
        let pairs = parse(b"topic=a%2Fb&topic=c+d&private&data=%zz&&x=1=2").unwrap();
        assert_eq!(
            pairs,
            vec![
                ("topic".into(), "a/b".into()),
                ("topic".into(), "c d".into()),
                ("private".into(), "".into()),
                ("data".into(), "%zz".into()),
                ("x".into(), "1=2".into()),
            ]
        );
    }

    #[test]
    fn refuses_invalid_utf8() {
        assert_eq!(
            parse(b"topic=%FF").unwrap_err(),
            FormError::InvalidUtf8("topic".into())
        );
        assert!(parse(b"%C3=x").is_err());
    }

    #[test]
    fn encode_round_trips() {
        let v = "a&b=c+d %e/\u{e9}";
        let pairs = parse(format!("k={}", encode(v)).as_bytes()).unwrap();
        assert_eq!(pairs[0].1, v);
    }
}
