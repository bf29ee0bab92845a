//! The service model derived from the bundle: services, methods, streaming kinds, idempotency.

use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::method_options::IdempotencyLevel;
use prost_types::{DescriptorProto, FileDescriptorSet};

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
    /// How the method pages, when it does (see [`Pagination`]).
    pub pagination: Option<Pagination>,
}

/// The fully-qualified name of the bundle's page request message.
pub const PAGINATION_REQUEST: &str = ".ameide_core_proto.common.v1.PaginationRequest";
/// The fully-qualified name of the bundle's page response message.
pub const PAGINATION_RESPONSE: &str = ".ameide_core_proto.common.v1.PaginationResponse";

/// A paginated method: a unary method whose request carries
/// `PaginationRequest pagination` and whose response carries
/// `PaginationResponse pagination` plus exactly one repeated field, the items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pagination {
    /// The request message, fully qualified with a leading dot.
    pub request_type: String,
    /// The response message, fully qualified with a leading dot.
    pub response_type: String,
    /// The response's repeated field (proto name).
    pub items_field: String,
    /// The items' type: a message or enum name with a leading dot, or a
    /// scalar's proto name (`string`, `int64`, …).
    pub item_type: String,
    /// The items' Rust type, as prost generates it.
    pub item_rust: ItemRust,
}

/// The Rust type prost gives a repeated field's items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemRust {
    /// A scalar, by its proto name (`string`, `int64`, …).
    Scalar(String),
    /// An enum: prost keeps repeated enum values as `i32`.
    Enum,
    /// A message, by its path under the crate root: the package's modules,
    /// one module per enclosing message (snake case), then the type
    /// (`ameide_core_proto::graph::v1::outer::Inner` for `.ameide_core_proto.graph.v1.Outer.Inner`).
    Message(String),
}

/// A module name the way prost writes it: snake case, and a Rust keyword
/// made usable (`r#type`; `self_` for the few that cannot be raw).
pub fn rust_module(segment: &str) -> String {
    let ident = crate::codegen::to_snake(segment);
    match ident.as_str() {
        "as" | "break" | "const" | "continue" | "else" | "enum" | "false" | "fn" | "for" | "if"
        | "impl" | "in" | "let" | "loop" | "match" | "mod" | "move" | "mut" | "pub" | "ref"
        | "return" | "static" | "struct" | "trait" | "true" | "type" | "unsafe" | "use"
        | "where" | "while" | "dyn" | "abstract" | "become" | "box" | "do" | "final" | "macro"
        | "override" | "priv" | "typeof" | "unsized" | "virtual" | "yield" | "async" | "await"
        | "try" | "gen" => format!("r#{ident}"),
        "_" | "super" | "self" | "Self" | "extern" | "crate" => format!("{ident}_"),
        s if s.starts_with(|c: char| c.is_ascii_digit()) => format!("_{ident}"),
        _ => ident,
    }
}

/// A proto package as a Rust module path (`type.v1` → `r#type::v1`).
pub fn rust_module_path(package: &str) -> String {
    package
        .split('.')
        .map(rust_module)
        .collect::<Vec<_>>()
        .join("::")
}

/// `Name` the way prost names a message type (upper camel case).
pub fn rust_type_name(name: &str) -> String {
    crate::codegen::to_snake(name)
        .split('_')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// The Rust path (under the crate root) of message `.pkg.Outer.Inner`: the
/// longest package of `set` it starts with, then one snake-case module per
/// enclosing message.
fn message_rust_path(set: &FileDescriptorSet, full_name: &str) -> Option<String> {
    let name = full_name.strip_prefix('.')?;
    let package = set
        .file
        .iter()
        .map(|f| f.package())
        .filter(|p| !p.is_empty() && name.starts_with(p) && name[p.len()..].starts_with('.'))
        .max_by_key(|p| p.len())?;
    let local: Vec<&str> = name[package.len() + 1..].split('.').collect();
    let (last, outer) = local.split_last()?;
    let mut path: Vec<String> = vec![rust_module_path(package)];
    path.extend(outer.iter().map(|m| rust_module(m)));
    path.push(rust_type_name(last));
    Some(path.join("::"))
}

fn find_message<'a>(set: &'a FileDescriptorSet, full_name: &str) -> Option<&'a DescriptorProto> {
    let name = full_name.strip_prefix('.')?;
    set.file.iter().find_map(|file| {
        let local = if file.package().is_empty() {
            name
        } else {
            name.strip_prefix(file.package())?.strip_prefix('.')?
        };
        file.message_type.iter().find(|m| m.name() == local)
    })
}

fn has_field(message: &DescriptorProto, name: &str, type_name: &str) -> bool {
    message.field.iter().any(|f| {
        f.name() == name
            && f.label() != Label::Repeated
            && f.r#type() == Type::Message
            && f.type_name() == type_name
    })
}

/// The pagination of a method from its request and response messages, if it pages.
pub fn pagination(
    set: &FileDescriptorSet,
    kind: StreamingKind,
    input_type: &str,
    output_type: &str,
) -> Option<Pagination> {
    if kind != StreamingKind::Unary {
        return None;
    }
    let request = find_message(set, input_type)?;
    let response = find_message(set, output_type)?;
    if !has_field(request, "pagination", PAGINATION_REQUEST)
        || !has_field(response, "pagination", PAGINATION_RESPONSE)
    {
        return None;
    }
    let mut repeated = response.field.iter().filter(|f| {
        f.label() == Label::Repeated
            // A map field is a repeated field of a synthetic `…Entry` message.
            && !(f.r#type() == Type::Message
                && response
                    .nested_type
                    .iter()
                    .any(|n| n.options.as_ref().is_some_and(|o| o.map_entry()) && f.type_name().ends_with(&format!(".{}", n.name()))))
    });
    let items = repeated.next()?;
    if repeated.next().is_some() {
        return None;
    }
    let (item_type, item_rust) = match items.r#type() {
        Type::Message => (
            items.type_name().to_owned(),
            ItemRust::Message(message_rust_path(set, items.type_name())?),
        ),
        Type::Enum => (items.type_name().to_owned(), ItemRust::Enum),
        other => {
            let name = other
                .as_str_name()
                .trim_start_matches("TYPE_")
                .to_ascii_lowercase();
            (name.clone(), ItemRust::Scalar(name))
        }
    };
    Some(Pagination {
        request_type: input_type.to_owned(),
        response_type: output_type.to_owned(),
        items_field: items.name().to_owned(),
        item_type,
        item_rust,
    })
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
    let all = bundle.descriptors_with_imports();
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
                        pagination: pagination(all, kind, m.input_type(), m.output_type()),
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
