//! Build-time tools of the Ameide Rust SDK.
//!
//! `ameide-build` turns the core proto bundle kept in `ameide-proto/` into
//! everything the SDK is built from:
//!
//! | Input | Output | Where |
//! |---|---|---|
//! | `proto/**/*.proto` | tonic client and server stubs (via protox → tonic-prost-build) | [`codegen::generate_stubs`] |
//! | the bundle | encoded descriptor set (with imports) | [`bundle::Bundle::reflection_descriptor_set`] |
//! | the bundle + `manifest/roster.json` | the method table and roster | [`codegen::render_method_table`] |
//! | the bundle + roster + [`contract`] | `manifest/ameide-client.json` | [`manifest::render`] |
//!
//! It is used by `ameide-proto/build.rs` (through [`build_script::run`]) and by
//! `xtask`, nobody else: services never run protobuf codegen of their own.
//!
//! ```no_run
//! let inputs = ameide_build::Inputs::load(std::path::Path::new("ameide-proto"))?;
//! inputs.check_wiring()?;
//! println!("{}", inputs.render_manifest());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod build_script;
pub mod bundle;
pub mod codegen;
pub mod contract;
pub mod manifest;
pub mod model;
pub mod pagination;
pub mod roster;

use std::fmt;
use std::path::{Path, PathBuf};

pub use bundle::{Bundle, BundleError};
pub use model::{Idempotency, MethodModel, ServiceModel, StreamingKind};
pub use roster::{Roster, RosterEntry, WiringError};

/// Directory of the bundle inside the proto crate.
pub const PROTO_DIR: &str = "proto";
/// Roster file inside the proto crate.
pub const ROSTER_PATH: &str = "manifest/roster.json";
/// Manifest file inside the proto crate.
pub const MANIFEST_PATH: &str = "manifest/ameide-client.json";

/// Everything the generators read: the compiled bundle, the roster and the
/// service model derived from the bundle.
#[derive(Debug, Clone)]
pub struct Inputs {
    crate_dir: PathBuf,
    /// The compiled bundle.
    pub bundle: Bundle,
    /// The hand-kept roster.
    pub roster: Roster,
    /// Services of the bundle.
    pub services: Vec<ServiceModel>,
}

/// Why the inputs could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// The bundle does not compile.
    Bundle(BundleError),
    /// The roster file is missing or invalid.
    Roster(String),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Bundle(e) => write!(f, "the proto bundle does not compile: {e}"),
            LoadError::Roster(e) => write!(f, "the roster is invalid: {e}"),
        }
    }
}

impl std::error::Error for LoadError {}

impl Inputs {
    /// Loads the bundle under `<crate_dir>/proto` and the roster under
    /// `<crate_dir>/manifest/roster.json`.
    pub fn load(crate_dir: &Path) -> Result<Self, LoadError> {
        let bundle = Bundle::compile(&crate_dir.join(PROTO_DIR)).map_err(LoadError::Bundle)?;
        let roster = Roster::load(&crate_dir.join(ROSTER_PATH)).map_err(LoadError::Roster)?;
        let services = model::services(&bundle);
        Ok(Inputs {
            crate_dir: crate_dir.to_owned(),
            bundle,
            roster,
            services,
        })
    }

    /// The proto crate directory the inputs were read from.
    pub fn crate_dir(&self) -> &Path {
        &self.crate_dir
    }

    /// Path of the committed manifest.
    pub fn manifest_path(&self) -> PathBuf {
        self.crate_dir.join(MANIFEST_PATH)
    }

    /// Checks that every service has a roster key and every key names a service.
    pub fn check_wiring(&self) -> Result<(), WiringError> {
        roster::check_wiring(&self.roster, &self.services)
    }

    /// Renders the manifest these inputs produce.
    pub fn render_manifest(&self) -> String {
        manifest::render(&self.bundle.digest(), &self.roster, &self.services)
    }

    /// Compares the committed manifest with the rendered one; a readable diff on drift.
    pub fn check_manifest(&self) -> Result<(), String> {
        let path = self.manifest_path();
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        manifest::check(&committed, &self.render_manifest())
            .map_err(|e| format!("{}: {e}", path.display()))
    }
}
