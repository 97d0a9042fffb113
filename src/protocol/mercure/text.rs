//! Character rules shared by topics, matchers, ids and event types.
//!
//! The draft forbids C0 and C1 control characters, DEL and Unicode format
//! characters (general category `Cf`) in these values: controls would let a
//! value split an SSE event (field injection), format characters enable
//! identifier spoofing.

use unicode_general_category::{get_general_category, GeneralCategory};

/// Returns the first forbidden character of `value`, if any.
pub fn forbidden_char(value: &str) -> Option<char> {
    value.chars().find(|&c| {
        let code = c as u32;
        code <= 0x1F
            || (0x7F..=0x9F).contains(&code)
            || get_general_category(c) == GeneralCategory::Format
    })
}

/// Checks a value against the character rules, naming the field in the error.
pub fn check_chars(field: &str, value: &str) -> Result<(), String> {
    match forbidden_char(value) {
        None => Ok(()),
        Some(c) => Err(format!(
            "{field} contains the forbidden character U+{:04X}",
            c as u32
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_controls_and_format_characters() {
        assert_eq!(forbidden_char("plain/topic"), None);
        assert_eq!(forbidden_char("caf\u{e9}"), None);
        assert_eq!(forbidden_char("a\nb"), Some('\n'));
        assert_eq!(forbidden_char("a\rb"), Some('\r'));
        assert_eq!(forbidden_char("a\u{7f}"), Some('\u{7f}'));
        assert_eq!(forbidden_char("a\u{85}"), Some('\u{85}'));
        assert_eq!(forbidden_char("a\u{200b}"), Some('\u{200b}'));
        assert_eq!(forbidden_char("a\u{202e}"), Some('\u{202e}'));
        assert!(check_chars("id", "x\u{0}").unwrap_err().contains("U+0000"));
    }
}
