//! Compiles the core proto bundle and generates the stubs, the method table,
//! the contract constants and the descriptor set. All logic is in `ameide-build`.

fn main() {
    ameide_build::build_script::run();
}
