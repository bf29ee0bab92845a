//! The workspace guardrails of contract §7, each a named check that points at
//! the offending file and line.
//!
//! | Check | Fails when |
//! |---|---|
//! | `proto-dependency` | a crate other than `ameide-sdk` depends on `ameide-proto` |
//! | `build-script-codegen` | a `build.rs` outside `ameide-proto` runs protobuf codegen (tonic-build, tonic-prost-build, prost-build, protox, ameide-build) |
//! | `patch-or-git` | a `[patch]`/`[replace]` entry or a git dependency names one of our crates (`ameide-*`) |
//! | `lockfile` | `Cargo.lock` is missing, or out of date (`cargo metadata --locked` fails) |
//! | `manifest-fresh` | the committed manifest differs from the bundle (see `cargo xtask manifest`) |
//! | `bundle-lint` | `buf lint` reports findings |
//!
//! The first three are read from the manifests and build scripts alone
//! ([`check_sources`]); the others run tools (`xtask policy` runs them all).

use std::fmt;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

/// The only crate allowed to depend on `ameide-proto`.
pub const SDK_CRATE: &str = "ameide-sdk";
/// The crate holding the bundle; its build script is the one that runs codegen.
pub const PROTO_CRATE: &str = "ameide-proto";
/// Crates whose presence in a build script means protobuf codegen.
pub const CODEGEN_CRATES: &[&str] = &[
    "tonic-build",
    "tonic-prost-build",
    "prost-build",
    "protox",
    "ameide-build",
    "protobuf-codegen",
];

/// One violated guardrail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The check's name (see the module table).
    pub check: &'static str,
    /// The offending file.
    pub file: PathBuf,
    /// 1-based line, when it can be pointed at.
    pub line: Option<usize>,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(
                f,
                "[{}] {}:{}: {}",
                self.check,
                self.file.display(),
                line,
                self.message
            ),
            None => write!(
                f,
                "[{}] {}: {}",
                self.check,
                self.file.display(),
                self.message
            ),
        }
    }
}

struct Manifest {
    path: PathBuf,
    text: String,
    table: Table,
}

impl Manifest {
    fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let table: Table = text
            .parse()
            .map_err(|e| format!("{} is not valid TOML: {e}", path.display()))?;
        Ok(Manifest {
            path: path.to_owned(),
            text,
            table,
        })
    }

    fn package_name(&self) -> Option<&str> {
        self.table.get("package")?.get("name")?.as_str()
    }

    /// 1-based line of `key` (a dependency name) after the header `[section]`.
    fn line_of(&self, section: &str, key: &str) -> Option<usize> {
        let lines: Vec<&str> = self.text.lines().collect();
        let header = format!("[{section}]");
        let start = lines
            .iter()
            .position(|l| l.trim() == header)
            .map_or(0, |i| i + 1);
        let starts_key = |l: &str| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(['=', '.']))
        };
        lines[start..]
            .iter()
            .position(|l| starts_key(l))
            .map(|i| start + i + 1)
            .or_else(|| lines.iter().position(|l| starts_key(l)).map(|i| i + 1))
    }

    fn line_containing(&self, needle: &str) -> Option<usize> {
        self.text
            .lines()
            .position(|l| l.contains(needle))
            .map(|i| i + 1)
    }
}

/// Every dependency table of a manifest: `(section header, table)`.
fn dependency_tables(table: &Table) -> Vec<(String, &Table)> {
    let mut out = Vec::new();
    for kind in ["dependencies", "dev-dependencies", "build-dependencies"] {
        if let Some(deps) = table.get(kind).and_then(Value::as_table) {
            out.push((kind.to_owned(), deps));
        }
    }
    if let Some(targets) = table.get("target").and_then(Value::as_table) {
        for (target, body) in targets {
            for kind in ["dependencies", "dev-dependencies", "build-dependencies"] {
                if let Some(deps) = body.get(kind).and_then(Value::as_table) {
                    out.push((format!("target.{target}.{kind}"), deps));
                }
            }
        }
    }
    out
}

/// The package a dependency entry names (`package = …` renames), resolving `workspace = true`.
fn dependency_package<'a>(
    key: &'a str,
    spec: &'a Value,
    workspace_deps: Option<&'a Table>,
) -> (&'a str, Option<&'a Value>) {
    let resolved = match spec.get("workspace").and_then(Value::as_bool) {
        Some(true) => workspace_deps.and_then(|w| w.get(key)).unwrap_or(spec),
        _ => spec,
    };
    let name = resolved
        .get("package")
        .and_then(Value::as_str)
        .or_else(|| spec.get("package").and_then(Value::as_str))
        .unwrap_or(key);
    (name, Some(resolved))
}

fn is_ours(package: &str) -> bool {
    package.starts_with("ameide-") || package.starts_with("ameide_")
}

/// The workspace members listed in the root manifest (with `dir/*` globs expanded).
fn members(root: &Path, root_manifest: &Manifest) -> Vec<PathBuf> {
    let Some(list) = root_manifest
        .table
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for member in list.iter().filter_map(Value::as_str) {
        if let Some(parent) = member.strip_suffix("/*") {
            if let Ok(entries) = std::fs::read_dir(root.join(parent)) {
                let mut dirs: Vec<PathBuf> = entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.join("Cargo.toml").exists())
                    .collect();
                dirs.sort();
                out.extend(dirs);
            }
        } else {
            out.push(root.join(member));
        }
    }
    out
}

/// The checks that read manifests and build scripts only: `proto-dependency`,
/// `build-script-codegen`, `patch-or-git`, and the presence half of `lockfile`.
pub fn check_sources(root: &Path) -> Result<Vec<Finding>, String> {
    let root_manifest = Manifest::read(&root.join("Cargo.toml"))?;
    let workspace_deps = root_manifest
        .table
        .get("workspace")
        .and_then(|w| w.get("dependencies"))
        .and_then(Value::as_table);
    let mut findings = Vec::new();

    if !root.join("Cargo.lock").exists() {
        findings.push(Finding {
            check: "lockfile",
            file: root.join("Cargo.lock"),
            line: None,
            message: "Cargo.lock is missing: run `cargo generate-lockfile` and commit it (CI builds with --locked)".into(),
        });
    }

    let mut manifests = vec![root_manifest.path.clone()];
    for member in members(root, &root_manifest) {
        manifests.push(member.join("Cargo.toml"));
    }
    manifests.dedup();

    for path in &manifests {
        let manifest = if *path == root_manifest.path {
            Manifest {
                path: root_manifest.path.clone(),
                text: root_manifest.text.clone(),
                table: root_manifest.table.clone(),
            }
        } else {
            Manifest::read(path)?
        };
        let package = manifest.package_name().map(str::to_owned);

        // patch-or-git: [patch.*] / [replace] entries for our crates.
        for section in ["patch", "replace"] {
            if let Some(patch) = manifest.table.get(section).and_then(Value::as_table) {
                let sources: Vec<(String, &Table)> = if section == "patch" {
                    patch
                        .iter()
                        .filter_map(|(src, t)| t.as_table().map(|t| (format!("patch.{src}"), t)))
                        .collect()
                } else {
                    vec![("replace".to_owned(), patch)]
                };
                for (header, entries) in sources {
                    for key in entries.keys() {
                        let name = key.split(':').next().unwrap_or(key);
                        if is_ours(name) {
                            findings.push(Finding {
                                check: "patch-or-git",
                                file: manifest.path.clone(),
                                line: manifest.line_of(&header, key).or_else(|| manifest.line_containing(key)),
                                message: format!("[{header}] overrides our crate {name}: Ring 1 builds against path dependencies in the workspace; remove the override"),
                            });
                        }
                    }
                }
            }
        }

        let deps_tables: Vec<(String, &Table)> = {
            let mut t = dependency_tables(&manifest.table);
            if let Some(ws) = workspace_deps.filter(|_| *path == root_manifest.path) {
                t.push(("workspace.dependencies".to_owned(), ws));
            }
            t
        };
        for (section, deps) in deps_tables {
            for (key, spec) in deps {
                let (name, resolved) = dependency_package(key, spec, workspace_deps);
                let resolved = resolved.unwrap_or(spec);
                if is_ours(name) && resolved.get("git").is_some() {
                    findings.push(Finding {
                        check: "patch-or-git",
                        file: manifest.path.clone(),
                        line: manifest.line_of(&section, key),
                        message: format!("{name} comes from git: our crates are path dependencies inside the workspace"),
                    });
                }
                if name == PROTO_CRATE
                    && package.as_deref().is_some_and(|p| p != SDK_CRATE)
                    && section != "workspace.dependencies"
                {
                    findings.push(Finding {
                        check: "proto-dependency",
                        file: manifest.path.clone(),
                        line: manifest.line_of(&section, key),
                        message: format!(
                            "{} depends on ameide-proto: only ameide-sdk may; import the types from ameide_sdk::proto",
                            package.as_deref().unwrap_or("?")
                        ),
                    });
                }
                if section.ends_with("build-dependencies")
                    && CODEGEN_CRATES.contains(&name)
                    && package.as_deref().is_some_and(|p| p != PROTO_CRATE)
                {
                    findings.push(Finding {
                        check: "build-script-codegen",
                        file: manifest.path.clone(),
                        line: manifest.line_of(&section, key),
                        message: format!(
                            "{} has the codegen crate {name} as a build dependency: only ameide-proto generates code from the bundle",
                            package.as_deref().unwrap_or("?")
                        ),
                    });
                }
            }
        }

        // build-script-codegen: the build script itself.
        if let Some(package) = &package
            && package != PROTO_CRATE
        {
            let dir = path.parent().unwrap_or(root);
            let script = manifest
                .table
                .get("package")
                .and_then(|p| p.get("build"))
                .and_then(Value::as_str)
                .map_or_else(|| dir.join("build.rs"), |b| dir.join(b));
            if let Ok(text) = std::fs::read_to_string(&script) {
                for (n, line) in text.lines().enumerate() {
                    let code = line.split("//").next().unwrap_or_default();
                    let hit = CODEGEN_CRATES
                        .iter()
                        .map(|c| c.replace('-', "_"))
                        .find(|c| code.contains(c.as_str()));
                    if let Some(hit) = hit {
                        findings.push(Finding {
                            check: "build-script-codegen",
                            file: script.clone(),
                            line: Some(n + 1),
                            message: format!("{package}'s build script runs protobuf codegen ({hit}): services and tools use the types re-exported by ameide-sdk"),
                        });
                    }
                }
            }
        }
    }

    // A .cargo/config.toml [patch] is just as much an override.
    let config = root.join(".cargo").join("config.toml");
    if let Ok(text) = std::fs::read_to_string(&config) {
        for (n, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if (trimmed.starts_with("[patch") || trimmed.starts_with("paths"))
                && !trimmed.starts_with('#')
            {
                findings.push(Finding {
                    check: "patch-or-git",
                    file: config.clone(),
                    line: Some(n + 1),
                    message: "dependency overrides in .cargo/config.toml are not allowed".into(),
                });
            }
        }
    }
    Ok(findings)
}

/// `lockfile`: `cargo metadata --locked` succeeds, so every build with `--locked` resolves.
pub fn check_locked(root: &Path, cargo: &Path) -> Option<Finding> {
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--locked", "--format-version", "1"])
        .current_dir(root)
        .output();
    match output {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(Finding {
            check: "lockfile",
            file: root.join("Cargo.lock"),
            line: None,
            message: format!(
                "Cargo.lock is out of date (cargo metadata --locked failed: {}); run `cargo update -w` and commit",
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .find(|l| l.contains("error"))
                    .unwrap_or("see cargo")
                    .trim()
            ),
        }),
        Err(e) => Some(Finding {
            check: "lockfile",
            file: root.join("Cargo.lock"),
            line: None,
            message: format!("cannot run cargo: {e}"),
        }),
    }
}

/// `manifest-fresh`: the roster wires every service and the committed manifest
/// matches the bundle of the proto crate at `proto_crate`.
pub fn check_manifest_fresh(proto_crate: &Path) -> Vec<Finding> {
    let inputs = match ameide_build::Inputs::load(proto_crate) {
        Ok(inputs) => inputs,
        Err(e) => {
            return vec![Finding {
                check: "manifest-fresh",
                file: proto_crate.join(ameide_build::PROTO_DIR),
                line: None,
                message: e.to_string(),
            }];
        }
    };
    let mut findings = Vec::new();
    if let Err(e) = inputs.check_wiring() {
        findings.push(Finding {
            check: "manifest-fresh",
            file: proto_crate.join(ameide_build::ROSTER_PATH),
            line: None,
            message: e.to_string(),
        });
    }
    if let Err(diff) = inputs.check_manifest() {
        findings.push(Finding {
            check: "manifest-fresh",
            file: inputs.manifest_path(),
            line: None,
            message: diff,
        });
    }
    findings
}

/// `bundle-lint`: `buf lint` (the module's `buf.yaml`, STANDARD) reports nothing.
/// The finding carries buf's own lines (`file:line:col:message`).
pub fn check_bundle_lint(proto_crate: &Path, buf: &Path) -> Option<Finding> {
    let output = std::process::Command::new(buf)
        .arg("lint")
        .current_dir(proto_crate)
        .output();
    match output {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(Finding {
            check: "bundle-lint",
            file: proto_crate.join("buf.yaml"),
            line: None,
            message: format!(
                "buf lint reports findings:\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        }),
        Err(e) => Some(Finding {
            check: "bundle-lint",
            file: proto_crate.join("buf.yaml"),
            line: None,
            message: format!("cannot run buf: {e}"),
        }),
    }
}
