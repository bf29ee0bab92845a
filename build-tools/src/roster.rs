//! The roster: which client key exposes which service. The one hand-kept input of the manifest.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::model::ServiceModel;

/// One roster row: a client key and the fully-qualified service it exposes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RosterEntry {
    /// Client key, e.g. `platform.organizations`.
    pub key: String,
    /// Fully-qualified service, e.g. `ameide_core_proto.platform.v1.OrganizationService`.
    pub service: String,
}

/// The roster, in the order the manifest and the client list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    entries: Vec<RosterEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RosterFile {
    #[serde(rename = "$comment", default)]
    _comment: Option<String>,
    roster: Vec<RosterEntry>,
}

impl Roster {
    /// Reads and validates a roster file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read roster {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses and validates roster JSON: keys are unique dotted lowerCamelCase
    /// segments, services are unique fully-qualified names.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: RosterFile =
            serde_json::from_str(text).map_err(|e| format!("invalid roster JSON: {e}"))?;
        let mut keys = HashSet::new();
        let mut services = HashSet::new();
        for entry in &file.roster {
            if !is_valid_key(&entry.key) {
                return Err(format!(
                    "invalid roster key {:?}: use dot-separated lowerCamelCase segments such as \"platform.organizations\"",
                    entry.key
                ));
            }
            if !keys.insert(entry.key.as_str()) {
                return Err(format!("roster key {:?} is listed twice", entry.key));
            }
            if !services.insert(entry.service.as_str()) {
                return Err(format!("service {:?} has two roster keys", entry.service));
            }
        }
        Ok(Roster {
            entries: file.roster,
        })
    }

    /// The rows, in order.
    pub fn entries(&self) -> &[RosterEntry] {
        &self.entries
    }

    /// The key of a service, if it has one.
    pub fn key_of(&self, service: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.service == service)
            .map(|e| e.key.as_str())
    }
}

fn is_valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.split('.').all(|segment| {
            let mut chars = segment.chars();
            chars.next().is_some_and(|c| c.is_ascii_lowercase())
                && chars.all(|c| c.is_ascii_alphanumeric())
        })
}

/// The roster and the bundle disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WiringError {
    /// Services in the bundle that no key exposes, with their files.
    pub unwired: Vec<(String, String)>,
    /// Keys whose service is not in the bundle.
    pub dangling: Vec<RosterEntry>,
}

impl fmt::Display for WiringError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "the roster and the proto bundle disagree:")?;
        for (service, file) in &self.unwired {
            writeln!(
                f,
                "  - service {service} ({file}) is not wired: add a client key for it to ameide-proto/manifest/roster.json"
            )?;
        }
        for entry in &self.dangling {
            writeln!(
                f,
                "  - roster key {:?} names service {}, which is not in the bundle",
                entry.key, entry.service
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for WiringError {}

/// Checks that every service has a key and every key names a service.
pub fn check_wiring(roster: &Roster, services: &[ServiceModel]) -> Result<(), WiringError> {
    let unwired: Vec<(String, String)> = services
        .iter()
        .filter(|s| roster.key_of(&s.full_name).is_none())
        .map(|s| (s.full_name.clone(), s.file.clone()))
        .collect();
    let dangling: Vec<RosterEntry> = roster
        .entries()
        .iter()
        .filter(|e| !services.iter().any(|s| s.full_name == e.service))
        .cloned()
        .collect();
    if unwired.is_empty() && dangling.is_empty() {
        Ok(())
    } else {
        Err(WiringError { unwired, dangling })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_duplicate_and_malformed_keys() {
        let dup = r#"{"roster":[{"key":"a","service":"p.A"},{"key":"a","service":"p.B"}]}"#;
        assert!(Roster::parse(dup).unwrap_err().contains("listed twice"));
        let bad = r#"{"roster":[{"key":"Platform.x","service":"p.A"}]}"#;
        assert!(
            Roster::parse(bad)
                .unwrap_err()
                .contains("invalid roster key")
        );
        let two = r#"{"roster":[{"key":"a","service":"p.A"},{"key":"b","service":"p.A"}]}"#;
        assert!(Roster::parse(two).unwrap_err().contains("two roster keys"));
        let unknown = r#"{"roster":[],"extra":1}"#;
        assert!(Roster::parse(unknown).unwrap_err().contains("extra"));
    }

    #[test]
    fn accepts_dotted_lower_camel_keys() {
        let ok = r#"{"roster":[{"key":"platform.organizationRoles","service":"p.A"}]}"#;
        assert_eq!(Roster::parse(ok).unwrap().entries().len(), 1);
    }
}
