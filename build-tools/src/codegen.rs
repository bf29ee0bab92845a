//! Rust code generated into `ameide-proto`'s `OUT_DIR`: tonic stubs, the method
//! table, the roster, the contract constants and the descriptor set.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use crate::bundle::Bundle;
use crate::contract;
use crate::model::ServiceModel;
use crate::roster::Roster;

/// File (in the output directory) that declares the nested proto modules.
pub const INCLUDE_FILE: &str = "_includes.rs";
/// File holding `METHODS` and `ROSTER`.
pub const METHOD_TABLE_FILE: &str = "method_table.rs";
/// File holding the contract constants.
pub const CONTRACT_FILE: &str = "contract.rs";
/// File holding the encoded descriptor set.
pub const DESCRIPTOR_SET_FILE: &str = "descriptor_set.bin";

/// Generates client and server stubs with `tonic-prost-build` into `out_dir`.
pub fn generate_stubs(bundle: &Bundle, out_dir: &Path) -> io::Result<()> {
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Clients are built over the SDK's layered channel, never `connect()`ed by hand.
        .build_transport(false)
        // Unimplemented methods answer UNIMPLEMENTED, as grpc-go's embedded
        // Unimplemented servers do: adding a method to the bundle does not
        // break every service that does not serve it yet.
        .generate_default_stubs(true)
        // tonic-prost's codec with 1 KiB instead of 8 KiB per-call buffers
        // (see `ameide_proto::codec`).
        .codec_path("crate::codec::ProstCodec")
        .include_file(INCLUDE_FILE)
        .out_dir(out_dir)
        .compile_fds(bundle.descriptors_with_imports().clone())?;
    // The package files `_includes.rs` names: never a stale file of an
    // earlier bundle left in OUT_DIR.
    let includes = std::fs::read_to_string(out_dir.join(INCLUDE_FILE))?;
    let mut stamped_methods = 0usize;
    for name in includes
        .split('"')
        .filter(|part| part.ends_with(".rs") && !part.contains('/'))
    {
        let path = out_dir.join(name);
        let code = std::fs::read_to_string(&path)?;
        let (stamped, methods) = stamp_clients(&code)
            .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?;
        stamped_methods += methods;
        if methods > 0 {
            std::fs::write(&path, stamped)?;
        }
    }
    if stamped_methods == 0 {
        return Err(io::Error::other(
            "no generated client method found to stamp: tonic's output changed; update ameide-build's stamp_clients",
        ));
    }
    Ok(())
}

/// The lines of a tonic client method that [`stamp_clients`] extends, as
/// tonic-build 0.14 writes them.
const CODEC_LINE: &str = "let codec = crate::codec::ProstCodec::default();";
const REQUEST_LINES: [&str; 2] = [
    "let mut req = request.into_request();",
    "let mut req = request.into_streaming_request();",
];
const CALLS: [&str; 4] = [
    "self.inner.unary(req, path, codec).await",
    "self.inner.server_streaming(req, path, codec).await",
    "self.inner.client_streaming(req, path, codec).await",
    "self.inner.streaming(req, path, codec).await",
];

/// Gives every method of the generated clients (`pub mod …_client`, never
/// the servers) an `ameide_proto::codec::ErrorStamp`: made with the codec,
/// put in the request's extensions for the SDK to fill, and applied to the
/// method's error and to the decoder's. Errors tonic raises above the SDK's
/// layers (a response it cannot decode or decompress, a unary response
/// without its message) then carry the call's facts like every other error.
/// Returns the code and how many methods it stamped (0 for a file without
/// clients, or one stamped already: the edit is idempotent).
///
/// Fails, rather than generating clients without it, when tonic's output no
/// longer has the expected shape: every client method must have exactly one
/// codec line, one request line and one call.
pub fn stamp_clients(code: &str) -> Result<(String, usize), String> {
    if code.contains("crate::codec::ErrorStamp::default()") {
        return Ok((code.to_owned(), 0));
    }
    let mut out = String::with_capacity(code.len() + 4096);
    let mut rest = code;
    let mut methods = 0usize;
    while let Some(start) = find_client_module(rest) {
        out.push_str(&rest[..start]);
        let module = &rest[start..];
        // The client module ends where the next module (its server) starts.
        let end = module[1..]
            .find("\npub mod ")
            .map_or(module.len(), |i| i + 1);
        let (client, after) = module.split_at(end);
        let codecs = client.matches(CODEC_LINE).count();
        let requests: usize = REQUEST_LINES
            .iter()
            .map(|l| client.matches(l).count())
            .sum();
        let calls: usize = CALLS.iter().map(|c| client.matches(c).count()).sum();
        if codecs != requests || codecs != calls {
            return Err(format!(
                "tonic's client code changed shape: {codecs} codec lines, {requests} request lines, {calls} calls; update ameide-build's stamp_clients"
            ));
        }
        let mut stamped = client.replace(
            CODEC_LINE,
            "let stamp = crate::codec::ErrorStamp::default();\n            \
             let codec = crate::codec::ProstCodec::stamped(stamp.clone());",
        );
        for line in REQUEST_LINES {
            stamped = stamped.replace(
                line,
                &format!("{line}\n            req.extensions_mut().insert(stamp.clone());"),
            );
        }
        for call in CALLS {
            stamped = stamped.replace(
                call,
                &format!("{call}.map_err(|status| stamp.stamp(status))"),
            );
        }
        methods += codecs;
        out.push_str(&stamped);
        rest = after;
    }
    out.push_str(rest);
    Ok((out, methods))
}

/// Where the next `pub mod …_client {` starts.
fn find_client_module(code: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = code[from..].find("pub mod ") {
        let at = from + i;
        let line_end = code[at..].find('\n').map_or(code.len(), |n| at + n);
        if code[at..line_end].trim_end().ends_with("_client {") {
            return Some(at);
        }
        from = line_end;
    }
    None
}

/// Renders the method table and roster: a sorted static slice per path.
pub fn render_method_table(roster: &Roster, services: &[ServiceModel]) -> String {
    let mut rows: Vec<(String, String, &str, &str, &str)> = Vec::new();
    for service in services {
        let key = roster.key_of(&service.full_name).unwrap_or("");
        for method in &service.methods {
            rows.push((
                method.path.clone(),
                format!("{:?}", service.full_name),
                key,
                method.kind.rust_variant(),
                method.idempotency.rust_variant(),
            ));
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out =
        String::from("// @generated by ameide-build from the proto bundle. Do not edit.\n\n");
    out.push_str(
        "/// Every method of the bundle, sorted by path.\npub static METHODS: &[MethodInfo] = &[\n",
    );
    for (path, service, key, kind, idem) in &rows {
        let method = path.rsplit('/').next().unwrap_or_default();
        let _ = writeln!(
            out,
            "    MethodInfo {{ path: {path:?}, service: {service}, method: {method:?}, roster_key: {key:?}, kind: StreamingKind::{kind}, idempotency: Idempotency::{idem} }},"
        );
    }
    out.push_str("];\n\n/// The roster: client key and fully-qualified service, in manifest order.\npub static ROSTER: &[RosterEntry] = &[\n");
    for entry in roster.entries() {
        let _ = writeln!(
            out,
            "    RosterEntry {{ key: {:?}, service: {:?} }},",
            entry.key, entry.service
        );
    }
    out.push_str("];\n");
    out
}

/// Renders the contract constants module body.
pub fn render_contract(bundle_digest: &str) -> String {
    let mut out = String::from(
        "// @generated by ameide-build from build-tools/src/contract.rs. Do not edit.\n\n",
    );
    let _ = writeln!(
        out,
        "/// `sha256:` digest of the canonical bundle descriptor set; equals the manifest's `bundle_digest`.\npub const BUNDLE_DIGEST: &str = {bundle_digest:?};"
    );
    let _ = writeln!(
        out,
        "/// Default endpoint (TLS).\npub const DEFAULT_ENDPOINT: &str = {:?};",
        contract::DEFAULT_ENDPOINT
    );
    let _ = writeln!(
        out,
        "/// Default whole-call timeout in milliseconds, all attempts included.\npub const DEFAULT_TIMEOUT_MS: u64 = {};",
        contract::DEFAULT_TIMEOUT_MS
    );
    let _ = writeln!(
        out,
        "/// Maximum attempts, the first one included.\npub const RETRY_MAX_ATTEMPTS: u32 = {};",
        contract::RETRY_MAX_ATTEMPTS
    );
    let _ = writeln!(
        out,
        "/// Delay before the second attempt, before jitter, in milliseconds.\npub const RETRY_INITIAL_BACKOFF_MS: u64 = {};",
        contract::RETRY_INITIAL_BACKOFF_MS
    );
    let _ = writeln!(
        out,
        "/// Growth factor of the delay between attempts.\npub const RETRY_BACKOFF_MULTIPLIER: f64 = {:?};",
        contract::RETRY_BACKOFF_MULTIPLIER
    );
    let _ = writeln!(
        out,
        "/// Upper bound of the delay between attempts, before jitter, in milliseconds.\npub const RETRY_MAX_BACKOFF_MS: u64 = {};",
        contract::RETRY_MAX_BACKOFF_MS
    );
    let _ = writeln!(
        out,
        "/// Lower bound of the jitter factor.\npub const RETRY_JITTER_MIN: f64 = {:?};",
        contract::RETRY_JITTER_MIN
    );
    let _ = writeln!(
        out,
        "/// Upper bound of the jitter factor.\npub const RETRY_JITTER_MAX: f64 = {:?};",
        contract::RETRY_JITTER_MAX
    );
    let _ = writeln!(
        out,
        "/// Status codes retried by default, by canonical name.\npub const RETRYABLE_CODES: &[&str] = &{:?};",
        contract::RETRYABLE_CODES
    );
    for (role, header) in contract::METADATA_HEADERS {
        let _ = writeln!(
            out,
            "/// Header carrying the {}.\npub const HEADER_{}: &str = {header:?};",
            role.replace('_', " "),
            role.to_ascii_uppercase()
        );
    }
    let _ = writeln!(
        out,
        "/// Baggage key that carries the session id.\npub const SESSION_BAGGAGE_KEY: &str = {:?};",
        contract::SESSION_BAGGAGE_KEY
    );
    let _ = writeln!(
        out,
        "/// Built-in client layers, outermost first.\npub const LAYERS: &[&str] = &{:?};",
        contract::LAYERS
    );
    out
}

/// File holding the `__ameide_client_set!` macro.
pub const CLIENT_SET_FILE: &str = "client_set.rs";

/// `lowerCamel` or `PascalCase` → `snake_case`, the way prost/tonic name modules and methods.
pub fn to_snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    let chars: Vec<char> = name.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let prev_lower =
                i > 0 && (chars[i - 1].is_ascii_lowercase() || chars[i - 1].is_ascii_digit());
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            let prev_upper = i > 0 && chars[i - 1].is_ascii_uppercase();
            if prev_lower || (prev_upper && next_lower) {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn pascal(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

/// Renders `__ameide_client_set!($client, $channel, $configure)`: one accessor
/// per roster key (`agents()`, `agents_runtime()`, `platform().organizations()`,
/// …), each returning the generated tonic client over a clone of the `channel`
/// field (of type `$channel`), passed through the caller's `$configure!(&channel,
/// client)` macro (message limits, compression), plus `ACCESSOR_KEYS`.
///
/// Keys have one or two dot-separated segments; a two-segment key groups its
/// accessor under a `<Group>Clients` handle.
pub fn render_client_set(roster: &Roster) -> Result<String, String> {
    let mut top = String::new();
    let mut groups: Vec<(String, String)> = Vec::new();
    for entry in roster.entries() {
        let (package, service) = entry
            .service
            .rsplit_once('.')
            .ok_or_else(|| format!("roster service {:?} has no package", entry.service))?;
        let client_type = format!(
            "$crate::{}::{}_client::{}Client<$channel>",
            crate::model::rust_module_path(package),
            to_snake(service),
            service
        );
        let client_ctor = client_type.replace("<$channel>", "");
        let segments: Vec<&str> = entry.key.split('.').collect();
        let (group, leaf) = match segments.as_slice() {
            [leaf] => (None, *leaf),
            [group, leaf] => (Some(*group), *leaf),
            _ => {
                return Err(format!(
                    "roster key {:?} has more than two segments; the client set supports `name` and `group.name`",
                    entry.key
                ));
            }
        };
        let doc = format!(
            "Client of `{}` (manifest key `{}`), over the client's layered channel. Cheap to create and to clone.",
            entry.service, entry.key
        );
        let accessor = to_snake(leaf);
        match group {
            None => {
                let _ = writeln!(
                    top,
                    "            #[doc = {doc:?}]\n            pub fn {accessor}(&self) -> {client_type} {{\n                $configure!(&self.channel, {client_ctor}::new(self.channel.clone()))\n            }}"
                );
            }
            Some(group) => {
                let body = format!(
                    "            #[doc = {doc:?}]\n            pub fn {accessor}(&self) -> {client_type} {{\n                $configure!(&self.channel, {client_ctor}::new(self.channel.clone()))\n            }}\n"
                );
                match groups.iter_mut().find(|(g, _)| g == group) {
                    Some((_, methods)) => methods.push_str(&body),
                    None => groups.push((group.to_owned(), body)),
                }
            }
        }
    }
    let mut group_items = String::new();
    for (group, methods) in &groups {
        let ty = format!("{}Clients", pascal(group));
        let accessor = to_snake(group);
        let _ = writeln!(
            top,
            "            #[doc = \"Clients of the `{group}.*` services.\"]\n            pub fn {accessor}(&self) -> {ty} {{\n                {ty} {{ channel: self.channel() }}\n            }}"
        );
        let _ = writeln!(
            group_items,
            "        #[doc = \"Clients of the `{group}.*` services, from `AmeideClient::{accessor}()`.\"]\n        #[derive(Debug, Clone)]\n        pub struct {ty} {{\n            channel: $channel,\n        }}\n\n        impl {ty} {{\n{methods}        }}\n"
        );
    }
    let keys: Vec<String> = roster
        .entries()
        .iter()
        .map(|e| format!("{:?}", e.key))
        .collect();
    Ok(format!(
        "// @generated by ameide-build from manifest/roster.json. Do not edit.\n\n\
         /// Expands to the typed client accessors of the roster for `$client`, whose\n\
         /// `channel` field is a `$channel`; `$configure!(&channel, client)` sets each\n\
         /// client up. Used by `ameide-sdk`.\n\
         #[doc(hidden)]\n\
         #[macro_export]\n\
         macro_rules! __ameide_client_set {{\n\
         \x20   ($client:ident, $channel:ty, $configure:ident) => {{\n\
         \x20       impl $client {{\n{top}        }}\n\n{group_items}\
         \x20       /// The roster keys the accessors expose, in manifest order.\n\
         \x20       pub const ACCESSOR_KEYS: &[&str] = &[{}];\n\
         \x20   }};\n\
         }}\n",
        keys.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::{stamp_clients, to_snake};

    const CLIENT: &str = "pub mod a_client {\n\
        pub async fn m(&mut self) {\n\
            let codec = crate::codec::ProstCodec::default();\n\
            let mut req = request.into_request();\n\
            self.inner.unary(req, path, codec).await\n\
        }\n\
        pub async fn s(&mut self) {\n\
            let codec = crate::codec::ProstCodec::default();\n\
            let mut req = request.into_request();\n\
            self.inner.server_streaming(req, path, codec).await\n\
        }\n\
        pub async fn c(&mut self) {\n\
            let codec = crate::codec::ProstCodec::default();\n\
            let mut req = request.into_streaming_request();\n\
            self.inner.client_streaming(req, path, codec).await\n\
        }\n\
        }\n";
    const SERVER: &str = "pub mod a_server {\n\
        let codec = crate::codec::ProstCodec::default();\n\
        }\n";

    #[test]
    fn client_methods_are_stamped_and_servers_left_alone() {
        let code = format!("{CLIENT}{SERVER}");
        let (out, methods) = stamp_clients(&code).unwrap();
        assert_eq!(methods, 3);
        for (needle, count) in [
            ("ErrorStamp::default()", 3),
            ("ProstCodec::stamped(stamp.clone())", 3),
            ("req.extensions_mut().insert(stamp.clone())", 3),
            (".map_err(|status| stamp.stamp(status))", 3),
        ] {
            assert_eq!(out.matches(needle).count(), count, "{needle}");
        }
        assert!(out.ends_with(SERVER), "the server module is untouched");
        // Idempotent: a second pass changes nothing.
        assert_eq!(stamp_clients(&out).unwrap(), (out.clone(), 0));
        // A file without clients is left as it is.
        assert_eq!(stamp_clients(SERVER).unwrap(), (SERVER.to_owned(), 0));
    }

    #[test]
    fn a_changed_tonic_output_fails_the_build_instead_of_skipping_the_stamp() {
        let changed = CLIENT.replace("self.inner.unary(req, path, codec).await", "other()");
        let err = stamp_clients(&changed).unwrap_err();
        assert!(err.contains("changed shape"), "{err}");
    }

    #[test]
    fn snake_case_matches_prost_naming() {
        assert_eq!(to_snake("AgentsRuntimeService"), "agents_runtime_service");
        assert_eq!(to_snake("agentsRuntime"), "agents_runtime");
        assert_eq!(to_snake("organizationRoles"), "organization_roles");
        assert_eq!(
            to_snake("WasmExtensionRuntimeService"),
            "wasm_extension_runtime_service"
        );
        assert_eq!(to_snake("graph"), "graph");
    }
}
