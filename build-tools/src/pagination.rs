//! Renders the pagination code of `ameide-proto` (`pagination.rs` in
//! `OUT_DIR`): the `PagedRequest`/`PagedResponse` impls of every paginated
//! method's messages, the `PAGINATED` table, and the `__ameide_pagination!`
//! macro with which `ameide-sdk` gives each typed client its page and item
//! streams. A method pages when [`crate::model::pagination`] says so.

use std::fmt::Write as _;

use crate::codegen::to_snake;
use crate::model::{ItemRust, Pagination, ServiceModel, rust_type_name};
use crate::roster::Roster;

/// File holding the pagination impls, table and macro.
pub const PAGINATION_FILE: &str = "pagination.rs";

/// The Rust path of a top-level message or enum `.pkg.Name`, under `root`
/// (`crate` or `$crate`), the way prost names it.
fn type_path(root: &str, full_name: &str) -> Result<String, String> {
    let name = full_name
        .strip_prefix('.')
        .ok_or_else(|| format!("type {full_name:?} is not fully qualified"))?;
    let (package, local) = name
        .rsplit_once('.')
        .ok_or_else(|| format!("type {full_name:?} has no package"))?;
    Ok(format!(
        "{root}::{}::{}",
        crate::model::rust_module_path(package),
        rust_type_name(local)
    ))
}

/// The Rust type of the items, under `root`.
fn item_rust_type(root: &str, item: &ItemRust) -> Result<String, String> {
    let scalar = match item {
        ItemRust::Message(path) => return Ok(format!("{root}::{path}")),
        // prost keeps repeated enum values as their numbers.
        ItemRust::Enum => "i32",
        ItemRust::Scalar(name) => match name.as_str() {
            "string" => "::std::string::String",
            "bytes" => "::std::vec::Vec<u8>",
            "bool" => "bool",
            "int32" | "sint32" | "sfixed32" => "i32",
            "int64" | "sint64" | "sfixed64" => "i64",
            "uint32" | "fixed32" => "u32",
            "uint64" | "fixed64" => "u64",
            "float" => "f32",
            "double" => "f64",
            other => {
                return Err(format!(
                    "paginated items of type {other:?} are not supported"
                ));
            }
        },
    };
    Ok(scalar.to_owned())
}

/// Renders the file; an error names a method whose types cannot be expressed.
pub fn render(roster: &Roster, services: &[ServiceModel]) -> Result<String, String> {
    let mut impls = String::new();
    let mut table = String::new();
    let mut traits = String::new();
    let mut seen_requests: Vec<String> = Vec::new();
    let mut seen_responses: Vec<String> = Vec::new();
    for entry in roster.entries() {
        let Some(service) = services.iter().find(|s| s.full_name == entry.service) else {
            continue;
        };
        let paged: Vec<(&str, &Pagination)> = service
            .methods
            .iter()
            .filter_map(|m| m.pagination.as_ref().map(|p| (m.name.as_str(), p)))
            .collect();
        if paged.is_empty() {
            continue;
        }
        let (package, service_name) = service
            .full_name
            .rsplit_once('.')
            .ok_or_else(|| format!("service {:?} has no package", service.full_name))?;
        let client = format!(
            "$crate::{}::{}_client::{}Client<$channel>",
            crate::model::rust_module_path(package),
            to_snake(service_name),
            service_name
        );
        let trait_name = format!("{service_name}Pages");
        let mut methods = String::new();
        let mut bodies = String::new();
        for (method, p) in paged {
            let request = type_path("crate", &p.request_type)?;
            let response = type_path("crate", &p.response_type)?;
            let item = item_rust_type("crate", &p.item_rust)?;
            let field = to_snake(&p.items_field);
            let path = format!("/{}/{method}", service.full_name);
            let _ = writeln!(
                table,
                "    PaginatedMethod {{ path: {path:?}, items_field: {:?} }},",
                p.items_field
            );
            // One impl per message, even where two methods share a request
            // or a response.
            if !seen_requests.contains(&p.request_type) {
                seen_requests.push(p.request_type.clone());
                let _ = write!(
                    impls,
                    "impl crate::pagination::PagedRequest for {request} {{\n\
                     \x20   fn page_token(&self) -> &str {{\n\
                     \x20       self.pagination.as_ref().map_or(\"\", |p| p.page_token.as_str())\n\
                     \x20   }}\n\
                     \x20   fn set_page_token(&mut self, token: ::std::string::String) {{\n\
                     \x20       self.pagination.get_or_insert_with(::core::default::Default::default).page_token = token;\n\
                     \x20   }}\n\
                     \x20   fn page_size(&self) -> i32 {{\n\
                     \x20       self.pagination.as_ref().map_or(0, |p| p.page_size)\n\
                     \x20   }}\n\
                     }}\n\n"
                );
            }
            if !seen_responses.contains(&p.response_type) {
                seen_responses.push(p.response_type.clone());
                let _ = write!(
                    impls,
                    "impl crate::pagination::PagedResponse for {response} {{\n\
                     \x20   type Item = {item};\n\
                     \x20   fn next_page_token(&self) -> &str {{\n\
                     \x20       self.pagination.as_ref().map_or(\"\", |p| p.next_page_token.as_str())\n\
                     \x20   }}\n\
                     \x20   fn total_size(&self) -> i64 {{\n\
                     \x20       self.pagination.as_ref().map_or(0, |p| p.total_size)\n\
                     \x20   }}\n\
                     \x20   fn items(&self) -> &[{item}] {{\n\
                     \x20       &self.{field}\n\
                     \x20   }}\n\
                     \x20   fn into_items(self) -> ::std::vec::Vec<{item}> {{\n\
                     \x20       self.{field}\n\
                     \x20   }}\n\
                     }}\n\n"
                );
            }
            let rust_method = to_snake(method);
            let request_m = type_path("$crate", &p.request_type)?;
            let response_m = type_path("$crate", &p.response_type)?;
            let item_m = item_rust_type("$crate", &p.item_rust)?;
            let doc_pages = format!(
                "The pages of `{method}`, following `next_page_token` from `request`'s own token until it is empty; each page is a call through the whole stack (own request id, own deadline). An error ends the stream."
            );
            let doc_items = format!(
                "The `{}` of every page of `{method}`, in order (see `{rust_method}_pages`).",
                p.items_field
            );
            let _ = write!(
                methods,
                "            #[doc = {doc_pages:?}]\n\
                 \x20           fn {rust_method}_pages(&self, request: {request_m}) -> $pages<{response_m}>;\n\
                 \x20           #[doc = {doc_items:?}]\n\
                 \x20           fn {rust_method}_items(&self, request: {request_m}) -> $items<{item_m}>;\n"
            );
            let _ = write!(
                bodies,
                "            fn {rust_method}_pages(&self, request: {request_m}) -> $pages<{response_m}> {{\n\
                 \x20               $pages::new(request, self.clone(), |mut client: {client}, request| async move {{\n\
                 \x20                   client.{rust_method}(request).await\n\
                 \x20               }})\n\
                 \x20           }}\n\
                 \x20           fn {rust_method}_items(&self, request: {request_m}) -> $items<{item_m}> {{\n\
                 \x20               self.{rust_method}_pages(request).items()\n\
                 \x20           }}\n"
            );
        }
        let doc = format!(
            "Page and item streams of the paginated methods of `{}` (client `{}`).",
            service.full_name, entry.key
        );
        let _ = write!(
            traits,
            "        #[doc = {doc:?}]\n\
             \x20       pub trait {trait_name} {{\n{methods}        }}\n\n\
             \x20       impl {trait_name} for {client} {{\n{bodies}        }}\n\n"
        );
    }
    Ok(format!(
        "// @generated by ameide-build from the bundle's descriptors. Do not edit.\n\n\
         {impls}\
         /// Every paginated method of the roster's services, in manifest order.\n\
         pub static PAGINATED: &[PaginatedMethod] = &[\n{table}];\n\n\
         /// Expands to one `<Service>Pages` trait per roster service with\n\
         /// paginated methods, implemented for its typed client over `$channel`:\n\
         /// `<method>_pages` returns a `$pages<Response>` (built with\n\
         /// `$pages::new(request, client, call)`) and `<method>_items` its\n\
         /// `.items()`, a `$items<Item>`. Used by `ameide-sdk`.\n\
         #[doc(hidden)]\n\
         #[macro_export]\n\
         macro_rules! __ameide_pagination {{\n\
         \x20   ($channel:ty, $pages:ident, $items:ident) => {{\n{traits}    }};\n\
         }}\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_names_follow_prost() {
        assert_eq!(
            rust_type_name("ListRepositoriesRequest"),
            "ListRepositoriesRequest"
        );
        assert_eq!(rust_type_name("HTTPRoute"), "HttpRoute");
        assert_eq!(
            type_path("crate", ".ameide_core_proto.graph.v1.Repository").unwrap(),
            "crate::ameide_core_proto::graph::v1::Repository"
        );
        assert_eq!(
            item_rust_type("$crate", &ItemRust::Scalar("string".into())).unwrap(),
            "::std::string::String"
        );
        assert!(item_rust_type("crate", &ItemRust::Scalar("group".into())).is_err());
    }

    const COMMON: &str = "syntax = \"proto3\";
package ameide_core_proto.common.v1;
message PaginationRequest { int32 page_size = 1; string page_token = 2; }
message PaginationResponse { string next_page_token = 1; int64 total_size = 2; }
";

    /// The four shapes today's bundle avoids: enum items, nested message
    /// items, a request shared by two paginated methods, a response shared
    /// by two; in a package and a message whose modules are Rust keywords
    /// (`r#type`).
    const SHAPES: &str = "syntax = \"proto3\";
package ameide_core_proto.type.v1;
import \"common.proto\";
enum Color { COLOR_UNSPECIFIED = 0; RED = 1; }
message Type { message Inner { string id = 1; } }
message ListColorsRequest { ameide_core_proto.common.v1.PaginationRequest pagination = 1; }
message ListColorsResponse { ameide_core_proto.common.v1.PaginationResponse pagination = 1; repeated Color colors = 2; }
message ListInnersRequest { ameide_core_proto.common.v1.PaginationRequest pagination = 1; }
message ListInnersResponse { ameide_core_proto.common.v1.PaginationResponse pagination = 1; repeated Type.Inner inners = 2; }
message SharedRequest { ameide_core_proto.common.v1.PaginationRequest pagination = 1; }
message OtherRequest { ameide_core_proto.common.v1.PaginationRequest pagination = 1; }
message NamesResponse { ameide_core_proto.common.v1.PaginationResponse pagination = 1; repeated string names = 2; }
message IdsResponse { ameide_core_proto.common.v1.PaginationResponse pagination = 1; repeated int64 ids = 2; }
service ShapesService {
  rpc ListColors(ListColorsRequest) returns (ListColorsResponse);
  rpc ListInners(ListInnersRequest) returns (ListInnersResponse);
  rpc ListNames(SharedRequest) returns (NamesResponse);
  rpc ListIds(SharedRequest) returns (IdsResponse);
  rpc ListNamesAgain(OtherRequest) returns (NamesResponse);
}
";

    fn shapes() -> (Roster, Vec<ServiceModel>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("common.proto"), COMMON).unwrap();
        std::fs::write(dir.path().join("shapes.proto"), SHAPES).unwrap();
        let set = protox::compile(["shapes.proto"], [dir.path()]).unwrap();
        let service = "ameide_core_proto.type.v1.ShapesService";
        let methods = [
            ("ListColors", "ListColorsRequest", "ListColorsResponse"),
            ("ListInners", "ListInnersRequest", "ListInnersResponse"),
            ("ListNames", "SharedRequest", "NamesResponse"),
            ("ListIds", "SharedRequest", "IdsResponse"),
            ("ListNamesAgain", "OtherRequest", "NamesResponse"),
        ]
        .into_iter()
        .map(|(name, input, output)| {
            let full = |m: &str| format!(".ameide_core_proto.type.v1.{m}");
            crate::model::MethodModel {
                name: name.to_owned(),
                path: format!("/{service}/{name}"),
                kind: crate::model::StreamingKind::Unary,
                idempotency: crate::model::Idempotency::NoSideEffects,
                pagination: crate::model::pagination(
                    &set,
                    crate::model::StreamingKind::Unary,
                    &full(input),
                    &full(output),
                ),
            }
        })
        .collect();
        let roster = Roster::parse(&format!(
            r#"{{"roster": [{{"key": "shapes", "service": "{service}"}}]}}"#
        ))
        .unwrap();
        let model = ServiceModel {
            full_name: service.to_owned(),
            file: "shapes.proto".to_owned(),
            methods,
        };
        (roster, vec![model])
    }

    #[test]
    fn the_four_shapes_render_as_prost_names_them_with_one_impl_per_message() {
        let (roster, services) = shapes();
        let paged: Vec<_> = services[0]
            .methods
            .iter()
            .map(|m| m.pagination.clone().expect("every method pages"))
            .collect();
        assert_eq!(paged[0].item_rust, ItemRust::Enum);
        assert_eq!(
            paged[1].item_rust,
            ItemRust::Message("ameide_core_proto::r#type::v1::r#type::Inner".into())
        );
        let out = render(&roster, &services).unwrap();
        // Enum items are prost's i32; nested items sit in the outer message's
        // module; keyword modules are raw identifiers, as prost writes them.
        assert!(out.contains("type Item = i32;"), "{out}");
        assert!(
            out.contains("type Item = crate::ameide_core_proto::r#type::v1::r#type::Inner;"),
            "{out}"
        );
        // One impl per message, however many methods share it.
        let count = |needle: &str| out.matches(needle).count();
        let shapes = "crate::ameide_core_proto::r#type::v1";
        assert_eq!(
            count(&format!("PagedRequest for {shapes}::SharedRequest ")),
            1
        );
        assert_eq!(
            count(&format!("PagedResponse for {shapes}::NamesResponse ")),
            1
        );
        assert_eq!(
            count(&format!("PagedResponse for {shapes}::IdsResponse ")),
            1
        );
        assert_eq!(
            count(&format!("PagedRequest for {shapes}::OtherRequest ")),
            1
        );
        assert_eq!(count("impl crate::pagination::PagedRequest for"), 4);
        assert_eq!(count("impl crate::pagination::PagedResponse for"), 4);
        // Every method still gets its streams.
        for method in [
            "list_colors",
            "list_inners",
            "list_names",
            "list_ids",
            "list_names_again",
        ] {
            assert!(out.contains(&format!("fn {method}_pages(")), "{method}");
            assert!(out.contains(&format!("fn {method}_items(")), "{method}");
        }
    }

    /// The rendered impls of the four shapes compile against the code prost
    /// generates for them: a throwaway crate (prost only, offline, its own
    /// target folder under the workspace's) holds both.
    #[test]
    fn the_four_shapes_compile_against_prosts_code() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_owned();
        let krate = tempfile::tempdir().unwrap();
        let src = krate.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        let protos = tempfile::tempdir().unwrap();
        std::fs::write(protos.path().join("common.proto"), COMMON).unwrap();
        std::fs::write(protos.path().join("shapes.proto"), SHAPES).unwrap();
        let set = protox::compile(["shapes.proto"], [protos.path()]).unwrap();
        tonic_prost_build::configure()
            .build_client(false)
            .build_server(false)
            .out_dir(&src)
            .compile_fds(set)
            .unwrap();
        let (roster, services) = shapes();
        std::fs::write(
            src.join("generated.rs"),
            render(&roster, &services).unwrap(),
        )
        .unwrap();
        // ameide-proto's own traits, with the rendered file in place of its
        // build-time include: the code is checked against what it implements.
        let traits = std::fs::read_to_string(root.join("ameide-proto/src/pagination.rs")).unwrap();
        let include = r#"include!(concat!(env!("OUT_DIR"), "/pagination.rs"));"#;
        assert!(
            traits.contains(include),
            "ameide-proto includes its pagination code another way"
        );
        std::fs::write(
            src.join("pagination.rs"),
            traits.replace(include, r#"include!("generated.rs");"#),
        )
        .unwrap();
        std::fs::write(
            src.join("lib.rs"),
            "#![allow(dead_code)]
pub mod ameide_core_proto {
    pub mod common { pub mod v1 { include!(\"ameide_core_proto.common.v1.rs\"); } }
    pub mod r#type { pub mod v1 { include!(\"ameide_core_proto.r#type.v1.rs\"); } }
}
pub mod pagination;
",
        )
        .unwrap();
        let prost_version = std::fs::read_to_string(root.join("Cargo.toml"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("prost = "))
            .unwrap()
            .to_owned();
        std::fs::write(
            krate.path().join("Cargo.toml"),
            format!(
                "[package]\nname = \"pagination-shapes\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\n[dependencies]\nprost = {prost_version}\n\n[workspace]\n"
            ),
        )
        .unwrap();
        std::fs::copy(root.join("Cargo.lock"), krate.path().join("Cargo.lock")).unwrap();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let output = std::process::Command::new(cargo)
            .args(["build", "--offline", "--quiet"])
            .current_dir(krate.path())
            .env("CARGO_TARGET_DIR", root.join("target/pagination-shapes"))
            .output()
            .unwrap();
        let files: Vec<_> = std::fs::read_dir(&src)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(
            output.status.success(),
            "the rendered pagination code does not compile: {} (files: {files:?})",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
