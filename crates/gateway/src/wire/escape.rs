//! Text from the wire, made safe to show to an operator.
//!
//! A subject, a method, a reason or a user id is whatever a caller sent.
//! Printed as is, a newline in it forges a second record in `audit tail`,
//! an escape sequence repaints the terminal, and a right-to-left override
//! makes `GetPerson` read as something else. [`Escaped`] is the one place
//! that decides what is shown literally: every character that could end a
//! line, drive a terminal or reorder text becomes `\u{..}`, and `\` becomes
//! `\\`, so the shown text is unambiguous. [`json_safe`] does the same for
//! JSON output, within JSON's own escapes, so that parsers still read the
//! exact value. What is stored is never escaped: this is for display only.

use std::fmt::{self, Write};

/// Shows `T`'s text with control, line-separator and bidirectional
/// characters escaped as `\u{..}`; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<T>(pub T);

/// Whether `c` must not reach a terminal or a log line as it is: C0 and C1
/// controls, DEL, the Unicode line and paragraph separators, and the
/// characters that change the direction of text.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{061c}'
        )
}

impl<T: fmt::Display> fmt::Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Escaping<'a, 'b>(&'a mut fmt::Formatter<'b>);
        impl Write for Escaping<'_, '_> {
            fn write_str(&mut self, text: &str) -> fmt::Result {
                // Safe runs go out whole; only the rare character is split out.
                let mut rest = text;
                while let Some(at) = rest.find(|c: char| c == '\\' || is_unsafe(c)) {
                    self.0.write_str(&rest[..at])?;
                    let c = rest[at..].chars().next().unwrap_or_default();
                    if c == '\\' {
                        self.0.write_str("\\\\")?;
                    } else {
                        write!(self.0, "\\u{{{:x}}}", u32::from(c))?;
                    }
                    rest = &rest[at + c.len_utf8()..];
                }
                self.0.write_str(rest)
            }
        }
        write!(Escaping(f), "{}", self.0)
    }
}

/// `json` (serialized JSON, e.g. one line of `--json` output) with every
/// unsafe character (see [`is_unsafe`]) that JSON allows literally written
/// as a `\uXXXX` escape instead: the same value for a parser, nothing that
/// acts on a terminal. Inside strings, a serializer has already escaped
/// newlines and tabs, so those left are whitespace between tokens, and
/// kept.
pub fn json_safe(json: String) -> String {
    let escape = |c: char| is_unsafe(c) && !matches!(c, '\n' | '\r' | '\t');
    if !json.contains(escape) {
        return json;
    }
    let mut safe = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if escape(c) {
            // All of them are in the Basic Multilingual Plane.
            let _ = write!(safe, "\\u{:04x}", u32::from(c));
        } else {
            safe.push(c);
        }
    }
    safe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_separators_and_bidi_are_escaped() {
        let shown =
            Escaped("Get\u{202e}nosreP\n1 forged\x1b[2J\u{85}\u{2028}\u{7f}a\\u{0}").to_string();
        assert_eq!(
            shown,
            "Get\\u{202e}nosreP\\u{a}1 forged\\u{1b}[2J\\u{85}\\u{2028}\\u{7f}a\\\\u{0}"
        );
        assert!(!shown.contains(is_unsafe));
        // Ordinary text, accents and other scripts included, is untouched.
        let plain = "/govbridge.civilregistry.v1.CivilRegistry/GetPerson Ndèye Fàll سلام";
        assert_eq!(Escaped(plain).to_string(), plain);
    }

    #[test]
    fn json_stays_the_same_value() {
        let value = serde_json::json!({"subject": "12\u{202e}34\u{7}\u{85}\u{2029}"});
        let safe = json_safe(value.to_string());
        assert!(!safe.contains(is_unsafe), "{safe}");
        assert!(safe.contains("\\u202e"), "{safe}");
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back, value);
        // Pretty-printed: the whitespace between tokens stays.
        let pretty = json_safe(serde_json::to_string_pretty(&value).unwrap());
        assert!(pretty.starts_with("{\n  \"subject\""), "{pretty}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&pretty).unwrap(),
            value
        );
    }
}
