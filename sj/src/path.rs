//! The ONE rule that turns a name from the network into a path component
//! under the account directory (DESIGN §3).
//!
//! Contacts are normalised bare JIDs; iq ids and namespaces are arbitrary
//! strings. The result never contains `/` or NUL, is never `.`, `..` or
//! empty, never one of the reserved names of the account directory, never
//! starts with `.`, and is at most 255 bytes. Bytes that would break these
//! rules are percent-encoded (`%2F`), and so is `%` itself, so the mapping
//! is reversible and two different names never share a path.

/// Names the account directory reserves for itself.
pub const RESERVED: &[&str] = &[
    "in",
    "out",
    "state",
    "mypresence",
    "roster",
    "passwd",
    "iq",
    "iq.d",
    "clients",
    "presence",
    "subscriptions",
];

/// What kind of name is being mapped (contacts must be valid bare JIDs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Contact,
    IqId,
    Namespace,
    Client,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathError(pub String);

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PathError {}

/// Map `name` to a single safe path component.
pub fn component(kind: Kind, name: &str) -> Result<String, PathError> {
    let _ = (kind, name);
    todo!("path")
}

/// The inverse of `component` (for listing directories).
pub fn decode(component: &str) -> Option<String> {
    let _ = component;
    todo!("path")
}
