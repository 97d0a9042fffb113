//! RFC 6570 URI templates as topic selectors (pre-standardization Mercure).
//!
//! Old clients subscribe with `topic=https://example.com/books/{id}`; the hub
//! matches a topic against such a template by compiling it to a regular
//! expression. The `regex` crate guarantees linear-time matching, so a
//! crafted template cannot cause catastrophic backtracking.

use regex::Regex;

const UNRESERVED: &str = r"(?:[A-Za-z0-9\-._~]|%[0-9A-Fa-f]{2})";
const RESERVED: &str = r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})";

/// Why a string is not a valid URI template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed URI template {template:?}: {reason}")]
pub struct TemplateError {
    template: String,
    reason: &'static str,
}

/// Returns true when `s` contains template syntax (and so must parse as one).
pub fn looks_like_template(s: &str) -> bool {
    s.contains('{') || s.contains('}')
}

/// Compiles a URI template into an anchored regular expression.
pub fn compile(template: &str) -> Result<Regex, TemplateError> {
    let err = |reason| TemplateError {
        template: template.to_owned(),
        reason,
    };
    let mut re = String::from("^");
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err(err("unbalanced '}'"));
        }
        re.push_str(&regex::escape(&rest[..open]));
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| err("unterminated expression"))?;
        let expr = &after[..close];
        if expr.contains('{') {
            return Err(err("nested '{'"));
        }
        re.push_str(&expression(expr).ok_or_else(|| err("invalid expression"))?);
        rest = &after[close + 1..];
    }
    re.push_str(&regex::escape(rest));
    re.push('$');
    Regex::new(&re).map_err(|_| err("too complex"))
}

/// Translates one `{...}` expression into a regex fragment.
fn expression(expr: &str) -> Option<String> {
    let (op, vars) = match expr.chars().next()? {
        c @ ('+' | '#' | '.' | '/' | ';' | '?' | '&') => (Some(c), &expr[1..]),
        _ => (None, expr),
    };
    let names: Vec<&str> = vars.split(',').collect();
    for spec in &names {
        let name = spec.trim_end_matches('*');
        let name = name.split(':').next().unwrap_or_default();
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '%');
        if !valid {
            return None;
        }
    }
    Some(match op {
        None => format!("(?:{UNRESERVED}*(?:,{UNRESERVED}*)*)"),
        Some('+') => format!("(?:{RESERVED}*)"),
        Some('#') => format!("(?:#{RESERVED}*)?"),
        Some('.') => format!("(?:\\.{UNRESERVED}*)*"),
        Some('/') => format!("(?:/{UNRESERVED}*)*"),
        Some(';') => format!("(?:;{UNRESERVED}+(?:={UNRESERVED}*)?)*"),
        Some('?') => {
            format!("(?:\\?{UNRESERVED}+={UNRESERVED}*(?:&{UNRESERVED}+={UNRESERVED}*)*)?")
        }
        Some(_) => format!("(?:&{UNRESERVED}+={UNRESERVED}*)*"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_simple_and_reserved_expansions() {
        let re = compile("https://example.com/books/{id}").unwrap();
        assert!(re.is_match("https://example.com/books/1"));
        assert!(!re.is_match("https://example.com/books/1/reviews"));
        assert!(!re.is_match("https://example.com/authors/1"));
        let re = compile("https://example.com/{+path}").unwrap();
        assert!(re.is_match("https://example.com/a/b/c"));
        let re = compile("/users{/id*}{?q}").unwrap();
        assert!(re.is_match("/users/1/2?q=x"));
    }

    #[test]
    fn refuses_malformed_templates() {
        assert!(compile("https://example.com/{id").is_err());
        assert!(compile("https://example.com/id}").is_err());
        assert!(compile("https://example.com/{}").is_err());
        assert!(compile("https://example.com/{a{b}}").is_err());
        assert!(compile("https://example.com/{a b}").is_err());
    }
}
