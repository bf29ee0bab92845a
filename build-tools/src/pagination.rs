//! Renders the pagination code of `ameide-proto` (`pagination.rs` in
//! `OUT_DIR`): the `PagedRequest`/`PagedResponse` impls of every paginated
//! method's messages, the `PAGINATED` table, and the `__ameide_pagination!`
//! macro with which `ameide-sdk` gives each typed client its page and item
//! streams. A method pages when [`crate::model::pagination`] says so.

use std::fmt::Write as _;

use crate::codegen::to_snake;
use crate::model::{Pagination, ServiceModel};
use crate::roster::Roster;

/// File holding the pagination impls, table and macro.
pub const PAGINATION_FILE: &str = "pagination.rs";

fn upper_camel(name: &str) -> String {
    to_snake(name)
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
        package.replace('.', "::"),
        upper_camel(local)
    ))
}

/// The Rust type of the items.
fn item_rust_type(root: &str, item_type: &str) -> Result<String, String> {
    if item_type.starts_with('.') {
        return type_path(root, item_type);
    }
    let scalar = match item_type {
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
    };
    Ok(scalar.to_owned())
}

/// Renders the file; an error names a method whose types cannot be expressed.
pub fn render(roster: &Roster, services: &[ServiceModel]) -> Result<String, String> {
    let mut impls = String::new();
    let mut table = String::new();
    let mut traits = String::new();
    let mut seen_requests: Vec<String> = Vec::new();
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
            package.replace('.', "::"),
            to_snake(service_name),
            service_name
        );
        let trait_name = format!("{service_name}Pages");
        let mut methods = String::new();
        let mut bodies = String::new();
        for (method, p) in paged {
            let request = type_path("crate", &p.request_type)?;
            let response = type_path("crate", &p.response_type)?;
            let item = item_rust_type("crate", &p.item_type)?;
            let field = to_snake(&p.items_field);
            let path = format!("/{}/{method}", service.full_name);
            let _ = writeln!(
                table,
                "    PaginatedMethod {{ path: {path:?}, items_field: {:?} }},",
                p.items_field
            );
            // One impl per message pair, even if two methods share them.
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
                     }}\n\n\
                     impl crate::pagination::PagedResponse for {response} {{\n\
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
            let item_m = item_rust_type("$crate", &p.item_type)?;
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
            upper_camel("ListRepositoriesRequest"),
            "ListRepositoriesRequest"
        );
        assert_eq!(upper_camel("HTTPRoute"), "HttpRoute");
        assert_eq!(
            type_path("crate", ".ameide_core_proto.graph.v1.Repository").unwrap(),
            "crate::ameide_core_proto::graph::v1::Repository"
        );
        assert_eq!(
            item_rust_type("$crate", "string").unwrap(),
            "::std::string::String"
        );
        assert!(item_rust_type("crate", "group").is_err());
    }
}
