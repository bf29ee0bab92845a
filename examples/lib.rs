//! Runnable examples of the Ameide Rust SDK; see the `[[example]]` targets.
