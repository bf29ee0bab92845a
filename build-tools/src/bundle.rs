//! Compiles the core proto bundle with protox and reports errors by file and line.
//!
//! The bundle is a directory of `.proto` files laid out by package
//! (`ameide_core_proto/<domain>/v1/*.proto`). Every file under it is compiled;
//! imports resolve against the same directory, and the well-known types come
//! from protox itself, so neither `protoc` nor `buf` is needed.

use std::fmt;
use std::path::{Path, PathBuf};

use miette::Diagnostic;
use prost::Message;
use prost_types::{FileDescriptorProto, FileDescriptorSet};
use sha2::{Digest, Sha256};

/// A compiled bundle: its files and the descriptors protox produced for them.
#[derive(Debug, Clone)]
pub struct Bundle {
    root: PathBuf,
    files: Vec<String>,
    with_source_info: FileDescriptorSet,
    with_imports: FileDescriptorSet,
    reflection_bytes: Vec<u8>,
}

/// A bundle that did not compile, located as precisely as protox allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleError {
    /// The proto file at fault, relative to the bundle root, when known.
    pub file: Option<String>,
    /// 1-based line of the fault, when known.
    pub line: Option<usize>,
    /// 1-based column of the fault, when known.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line, self.column) {
            (Some(file), Some(line), Some(col)) => {
                write!(f, "{file}:{line}:{col}: {}", self.message)
            }
            (Some(file), Some(line), None) => write!(f, "{file}:{line}: {}", self.message),
            (Some(file), None, _) => write!(f, "{file}: {}", self.message),
            (None, ..) => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for BundleError {}

impl BundleError {
    fn plain(message: impl Into<String>) -> Self {
        BundleError {
            file: None,
            line: None,
            column: None,
            message: message.into(),
        }
    }

    fn from_protox(err: &protox::Error) -> Self {
        let mut located = BundleError {
            file: err.file().map(str::to_owned),
            line: None,
            column: None,
            message: err.to_string(),
        };
        if let (Some(source), Some(mut labels)) = (err.source_code(), err.labels())
            && let Some(label) = labels.next()
        {
            if let Ok(span) = source.read_span(label.inner(), 0, 0) {
                located.line = Some(span.line() + 1);
                located.column = Some(span.column() + 1);
                if let Some(name) = span.name() {
                    located.file = Some(name.to_owned());
                }
            }
            if let Some(what) = label.label() {
                located.message = format!("{} ({what})", located.message);
            }
        }
        if let Some(help) = err.help() {
            located.message = format!("{}; help: {help}", located.message);
        }
        located
    }
}

impl Bundle {
    /// Compiles every `.proto` file under `root`.
    ///
    /// Fails with the file, line and message of the first error, or when the
    /// directory holds no proto file at all.
    pub fn compile(root: &Path) -> Result<Self, BundleError> {
        let files = list_proto_files(root)?;
        if files.is_empty() {
            return Err(BundleError::plain(format!(
                "no .proto files under {}",
                root.display()
            )));
        }
        let mut compiler =
            protox::Compiler::new([root]).map_err(|e| BundleError::from_protox(&e))?;
        compiler.include_source_info(true).include_imports(false);
        for file in &files {
            compiler
                .open_file(file)
                .map_err(|e| BundleError::from_protox(&e))?;
        }
        let with_source_info = compiler.file_descriptor_set();
        compiler.include_imports(true);
        let with_imports = compiler.file_descriptor_set();
        compiler.include_source_info(false);
        let reflection_bytes = compiler.encode_file_descriptor_set();
        Ok(Bundle {
            root: root.to_owned(),
            files,
            with_source_info,
            with_imports,
            reflection_bytes,
        })
    }

    /// The bundle root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The bundle's files, relative to the root, sorted.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// Descriptors of the bundle's own files (not their imports), with comments.
    pub fn descriptors(&self) -> &FileDescriptorSet {
        &self.with_source_info
    }

    /// Descriptors of the bundle's files and everything they import (the
    /// well-known types), with comments: what code generation needs to resolve
    /// every referenced type.
    pub fn descriptors_with_imports(&self) -> &FileDescriptorSet {
        &self.with_imports
    }

    /// Encoded descriptor set of the bundle and everything it imports, without
    /// source info: what a reflection service or a tool needs.
    pub fn reflection_descriptor_set(&self) -> &[u8] {
        &self.reflection_bytes
    }

    /// `sha256:<hex>` of the canonical descriptor set: the bundle's files only,
    /// sorted by name, without source info. Comment edits keep it; any change
    /// to a package, message, field, service, method or option changes it.
    pub fn digest(&self) -> String {
        let mut files: Vec<FileDescriptorProto> = self
            .with_source_info
            .file
            .iter()
            .map(|f| FileDescriptorProto {
                source_code_info: None,
                ..f.clone()
            })
            .collect();
        files.sort_by(|a, b| a.name().cmp(b.name()));
        let canonical = FileDescriptorSet { file: files }.encode_to_vec();
        format!("sha256:{}", hex::encode(Sha256::digest(canonical)))
    }
}

fn list_proto_files(root: &Path) -> Result<Vec<String>, BundleError> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) -> Result<(), BundleError> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            BundleError::plain(format!(
                "cannot read bundle directory {}: {e}",
                dir.display()
            ))
        })?;
        for entry in entries {
            let entry = entry.map_err(|e| {
                BundleError::plain(format!(
                    "cannot read bundle directory {}: {e}",
                    dir.display()
                ))
            })?;
            let path = entry.path();
            if path.is_dir() {
                walk(&path, root, out)?;
            } else if path.extension().is_some_and(|ext| ext == "proto") {
                let relative = path.strip_prefix(root).unwrap_or(&path);
                let name = relative
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push(name);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "pkg/v1/broken.proto",
            "syntax = \"proto3\";\npackage pkg.v1;\n\nmessage Broken {\n  string name = 1\n}\n",
        );
        let err = Bundle::compile(dir.path()).unwrap_err();
        assert_eq!(err.file.as_deref(), Some("pkg/v1/broken.proto"));
        assert_eq!(err.line, Some(6), "{err}");
        assert!(
            err.to_string().starts_with("pkg/v1/broken.proto:6:"),
            "{err}"
        );
    }

    #[test]
    fn missing_import_names_importing_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "pkg/v1/a.proto",
            "syntax = \"proto3\";\npackage pkg.v1;\nimport \"pkg/v1/missing.proto\";\nmessage A {}\n",
        );
        let err = Bundle::compile(dir.path()).unwrap_err();
        assert_eq!(err.file.as_deref(), Some("pkg/v1/a.proto"), "{err}");
        assert_eq!(err.line, Some(3), "{err}");
        assert!(err.message.contains("pkg/v1/missing.proto"), "{err}");
    }

    #[test]
    fn unknown_type_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "pkg/v1/a.proto",
            "syntax = \"proto3\";\npackage pkg.v1;\nmessage A {\n  Nope field = 1;\n}\n",
        );
        let err = Bundle::compile(dir.path()).unwrap_err();
        assert_eq!(err.file.as_deref(), Some("pkg/v1/a.proto"), "{err}");
        assert_eq!(err.line, Some(4), "{err}");
        assert!(err.message.contains("Nope"), "{err}");
    }

    #[test]
    fn empty_directory_is_an_error_not_an_empty_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let err = Bundle::compile(dir.path()).unwrap_err();
        assert!(err.message.contains("no .proto files"), "{err}");
    }

    #[test]
    fn digest_ignores_comments_but_not_fields() {
        let dir = tempfile::tempdir().unwrap();
        let base = "syntax = \"proto3\";\npackage pkg.v1;\nmessage A {\n  string a = 1;\n}\n";
        write(dir.path(), "pkg/v1/a.proto", base);
        let first = Bundle::compile(dir.path()).unwrap().digest();
        write(
            dir.path(),
            "pkg/v1/a.proto",
            &format!("// A comment.\n{base}"),
        );
        assert_eq!(Bundle::compile(dir.path()).unwrap().digest(), first);
        write(
            dir.path(),
            "pkg/v1/a.proto",
            &base.replace("string a = 1;", "string a = 1;\n  string b = 2;"),
        );
        assert_ne!(Bundle::compile(dir.path()).unwrap().digest(), first);
    }
}
