//! XML escaping for character data and attribute values.

/// Escape `&`, `<`, `>` for character data.
pub fn text(s: &str) -> String {
    let _ = s;
    todo!("escape")
}

/// Escape `&`, `<`, `>`, `'`, `"` for an attribute value (either quote).
pub fn attr(s: &str) -> String {
    let _ = s;
    todo!("escape")
}

/// Resolve the five predefined entities and character references.
/// `None` on an unknown entity or a reference to a non-`Char`.
pub fn unescape(s: &str) -> Option<String> {
    let _ = s;
    todo!("escape")
}
