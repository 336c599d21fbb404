//! JIDs (RFC 7622): parse, validate, normalise, bare and full forms.
//!
//! Normalisation here is the subset that needs no Unicode tables: the
//! localpart and domain are lowercased (full Unicode lowercase), the
//! resource is kept as is. Rejected: empty parts, parts over 1023 bytes,
//! forbidden localpart characters (`"&'/:<>@` and space), control
//! characters, a domain with `/`/`@`, a trailing dot is removed.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Jid {
    local: Option<String>,
    domain: String,
    resource: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JidError(pub &'static str);

impl fmt::Display for JidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid JID: {}", self.0)
    }
}

impl std::error::Error for JidError {}

impl Jid {
    pub fn parse(s: &str) -> Result<Jid, JidError> {
        let _ = s;
        todo!("jid")
    }
    pub fn local(&self) -> Option<&str> {
        self.local.as_deref()
    }
    pub fn domain(&self) -> &str {
        &self.domain
    }
    pub fn resource(&self) -> Option<&str> {
        self.resource.as_deref()
    }
    /// The same JID without the resource.
    pub fn bare(&self) -> Jid {
        Jid {
            local: self.local.clone(),
            domain: self.domain.clone(),
            resource: None,
        }
    }
    pub fn is_bare(&self) -> bool {
        self.resource.is_none()
    }
    /// This JID's bare form with another resource.
    pub fn with_resource(&self, resource: &str) -> Result<Jid, JidError> {
        let _ = resource;
        todo!("jid")
    }
}

impl fmt::Display for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = &self.local {
            write!(f, "{l}@")?;
        }
        f.write_str(&self.domain)?;
        if let Some(r) = &self.resource {
            write!(f, "/{r}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Jid {
    type Err = JidError;
    fn from_str(s: &str) -> Result<Jid, JidError> {
        Jid::parse(s)
    }
}
