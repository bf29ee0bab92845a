//! The service model derived from the bundle: services, methods, streaming kinds, idempotency.

use prost_types::method_options::IdempotencyLevel;

use crate::bundle::Bundle;

/// How a method streams, as gRPC sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamingKind {
    /// One request, one response.
    Unary,
    /// One request, a stream of responses.
    ServerStreaming,
    /// A stream of requests, one response.
    ClientStreaming,
    /// Streams both ways.
    BidiStreaming,
}

impl StreamingKind {
    /// The name used in the manifest (`unary`, `server_streaming`, …).
    pub fn manifest_name(self) -> &'static str {
        match self {
            StreamingKind::Unary => "unary",
            StreamingKind::ServerStreaming => "server_streaming",
            StreamingKind::ClientStreaming => "client_streaming",
            StreamingKind::BidiStreaming => "bidi_streaming",
        }
    }

    /// The variant name of `ameide_proto::StreamingKind`.
    pub fn rust_variant(self) -> &'static str {
        match self {
            StreamingKind::Unary => "Unary",
            StreamingKind::ServerStreaming => "ServerStreaming",
            StreamingKind::ClientStreaming => "ClientStreaming",
            StreamingKind::BidiStreaming => "BidiStreaming",
        }
    }
}

/// A method's `idempotency_level` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Idempotency {
    /// No option, or `IDEMPOTENCY_UNKNOWN`: the call may have side effects and is not safe to repeat.
    Unknown,
    /// `NO_SIDE_EFFECTS`: read-only.
    NoSideEffects,
    /// `IDEMPOTENT`: repeating it has the effect of doing it once.
    Idempotent,
}

impl Idempotency {
    /// The name used in the manifest: the protobuf enum value's name.
    pub fn manifest_name(self) -> &'static str {
        match self {
            Idempotency::Unknown => "IDEMPOTENCY_UNKNOWN",
            Idempotency::NoSideEffects => "NO_SIDE_EFFECTS",
            Idempotency::Idempotent => "IDEMPOTENT",
        }
    }

    /// The variant name of `ameide_proto::Idempotency`.
    pub fn rust_variant(self) -> &'static str {
        match self {
            Idempotency::Unknown => "Unknown",
            Idempotency::NoSideEffects => "NoSideEffects",
            Idempotency::Idempotent => "Idempotent",
        }
    }
}

/// One RPC of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodModel {
    /// The method's name, e.g. `GetAgent`.
    pub name: String,
    /// The HTTP/2 path, `/package.Service/Method`.
    pub path: String,
    /// Streaming kind.
    pub kind: StreamingKind,
    /// Idempotency level.
    pub idempotency: Idempotency,
}

/// One service of the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceModel {
    /// Fully-qualified name, `package.Service`.
    pub full_name: String,
    /// The proto file that declares it.
    pub file: String,
    /// Its methods, in declaration order.
    pub methods: Vec<MethodModel>,
}

/// Every service of the bundle, in file order, then declaration order.
pub fn services(bundle: &Bundle) -> Vec<ServiceModel> {
    let mut out = Vec::new();
    for file in &bundle.descriptors().file {
        for service in &file.service {
            let full_name = if file.package().is_empty() {
                service.name().to_owned()
            } else {
                format!("{}.{}", file.package(), service.name())
            };
            let methods = service
                .method
                .iter()
                .map(|m| {
                    let kind = match (m.client_streaming(), m.server_streaming()) {
                        (false, false) => StreamingKind::Unary,
                        (false, true) => StreamingKind::ServerStreaming,
                        (true, false) => StreamingKind::ClientStreaming,
                        (true, true) => StreamingKind::BidiStreaming,
                    };
                    let level = m
                        .options
                        .as_ref()
                        .map(|o| o.idempotency_level())
                        .unwrap_or(IdempotencyLevel::IdempotencyUnknown);
                    let idempotency = match level {
                        IdempotencyLevel::IdempotencyUnknown => Idempotency::Unknown,
                        IdempotencyLevel::NoSideEffects => Idempotency::NoSideEffects,
                        IdempotencyLevel::Idempotent => Idempotency::Idempotent,
                    };
                    MethodModel {
                        name: m.name().to_owned(),
                        path: format!("/{full_name}/{}", m.name()),
                        kind,
                        idempotency,
                    }
                })
                .collect();
            out.push(ServiceModel {
                full_name,
                file: file.name().to_owned(),
                methods,
            });
        }
    }
    out
}

/// The idempotency level the contract asks for, from the method name alone:
/// `Get*`, `List*`, `Search*`, `Describe*` and `Watch*` are `NO_SIDE_EFFECTS`,
/// `Update*` and `Delete*` are `IDEMPOTENT`, anything else is unknown.
pub fn expected_idempotency(method_name: &str) -> Idempotency {
    const READ_ONLY: &[&str] = &["Get", "List", "Search", "Describe", "Watch"];
    const IDEMPOTENT: &[&str] = &["Update", "Delete"];
    let starts = |prefixes: &[&str]| {
        prefixes.iter().any(|p| {
            method_name
                .strip_prefix(p)
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
        })
    };
    if starts(READ_ONLY) {
        Idempotency::NoSideEffects
    } else if starts(IDEMPOTENT) {
        Idempotency::Idempotent
    } else {
        Idempotency::Unknown
    }
}

/// Methods whose `idempotency_level` option disagrees with [`expected_idempotency`],
/// as readable lines.
pub fn idempotency_findings(services: &[ServiceModel]) -> Vec<String> {
    let mut findings = Vec::new();
    for service in services {
        for method in &service.methods {
            let expected = expected_idempotency(&method.name);
            if method.idempotency != expected {
                findings.push(format!(
                    "{}: {} has idempotency_level {} but its name asks for {}",
                    service.file,
                    method.path,
                    method.idempotency.manifest_name(),
                    expected.manifest_name()
                ));
            }
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_idempotency_follows_the_name_prefix() {
        assert_eq!(expected_idempotency("GetAgent"), Idempotency::NoSideEffects);
        assert_eq!(
            expected_idempotency("ListAgents"),
            Idempotency::NoSideEffects
        );
        assert_eq!(
            expected_idempotency("SearchNodes"),
            Idempotency::NoSideEffects
        );
        assert_eq!(
            expected_idempotency("DescribeWorkflowRun"),
            Idempotency::NoSideEffects
        );
        assert_eq!(
            expected_idempotency("WatchThings"),
            Idempotency::NoSideEffects
        );
        assert_eq!(expected_idempotency("UpdateTeam"), Idempotency::Idempotent);
        assert_eq!(expected_idempotency("DeleteNode"), Idempotency::Idempotent);
        assert_eq!(expected_idempotency("CreateAgent"), Idempotency::Unknown);
        assert_eq!(expected_idempotency("Getaway"), Idempotency::Unknown);
        assert_eq!(expected_idempotency("Get"), Idempotency::Unknown);
    }
}
