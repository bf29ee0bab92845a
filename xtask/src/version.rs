//! Versions from git tags (contract §7).
//!
//! | HEAD | Version |
//! |---|---|
//! | tagged `vX.Y.Z` (and no tag in the repository is newer) | `X.Y.Z`, a release |
//! | tagged `vX.Y.Z`, but a newer `vA.B.C` exists | refused: releasing an older tag |
//! | anything else | `X.Y.(Z+1)-dev.<YYYYMMDDHHMMSS>+g<sha7>` after the latest tag reachable from HEAD (commit time, UTC); `0.0.1-dev…` when there is no tag |
//!
//! A dev build therefore sorts after the release it follows and before the
//! next patch release. Only `vMAJOR.MINOR.PATCH` tags count.

use std::fmt;
use std::path::Path;

use crate::git;

/// A release version `MAJOR.MINOR.PATCH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Release {
    /// Major.
    pub major: u64,
    /// Minor.
    pub minor: u64,
    /// Patch.
    pub patch: u64,
}

impl Release {
    /// Parses `vX.Y.Z` (the leading `v` required); anything else is not a release tag.
    pub fn from_tag(tag: &str) -> Option<Self> {
        let mut parts = tag.strip_prefix('v')?.split('.');
        let mut next = || -> Option<u64> {
            let p = parts.next()?;
            (!p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (p == "0" || !p.starts_with('0')))
            .then(|| p.parse().ok())
            .flatten()
        };
        let release = Release {
            major: next()?,
            minor: next()?,
            patch: next()?,
        };
        parts.next().is_none().then_some(release)
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// What `cargo xtask version` computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Computed {
    /// HEAD carries the newest release tag.
    Release(Release),
    /// A dev build after `base` (the latest reachable tag, if any).
    Dev {
        /// The full version string.
        version: String,
        /// The tag it follows.
        base: Option<Release>,
    },
}

impl Computed {
    /// The version string.
    pub fn version(&self) -> String {
        match self {
            Computed::Release(r) => r.to_string(),
            Computed::Dev { version, .. } => version.clone(),
        }
    }

    /// Whether this is a release.
    pub fn is_release(&self) -> bool {
        matches!(self, Computed::Release(_))
    }
}

fn release_tags(repo: &Path, extra: &[&str]) -> Result<Vec<Release>, String> {
    let mut args = vec!["tag", "--list", "v*"];
    args.extend_from_slice(extra);
    let out = git(repo, &args)?;
    let mut tags: Vec<Release> = out
        .lines()
        .filter_map(|t| Release::from_tag(t.trim()))
        .collect();
    tags.sort();
    Ok(tags)
}

/// `YYYYMMDDHHMMSS` of a Unix timestamp, in UTC.
pub fn utc_stamp(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm), proleptic Gregorian.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

/// Computes the version of `repo`'s HEAD.
pub fn compute(repo: &Path) -> Result<Computed, String> {
    let head_tags = release_tags(repo, &["--points-at", "HEAD"])?;
    let all_tags = release_tags(repo, &[])?;
    if let Some(release) = head_tags.last().copied() {
        if let Some(newest) = all_tags.last().copied()
            && newest > release
        {
            return Err(format!(
                "refusing to release v{release}: v{newest} is newer; a release tag must be the latest tag"
            ));
        }
        return Ok(Computed::Release(release));
    }
    let reachable = release_tags(repo, &["--merged", "HEAD"])?;
    let base = reachable.last().copied();
    let next = base.map_or(
        Release {
            major: 0,
            minor: 0,
            patch: 1,
        },
        |b| Release {
            patch: b.patch + 1,
            ..b
        },
    );
    let sha = git(repo, &["rev-parse", "--short=7", "HEAD"])?;
    let time: i64 = git(repo, &["log", "-1", "--format=%ct", "HEAD"])?
        .parse()
        .map_err(|_| "git log printed no commit time".to_string())?;
    Ok(Computed::Dev {
        version: format!("{next}-dev.{}+g{sha}", utc_stamp(time)),
        base,
    })
}

/// Stamps `version` into a copy of the root manifest: `[workspace.package]
/// version` and the `=<current>` pins of our own crates in
/// `[workspace.dependencies]`. The source tree keeps its one version.
pub fn stamp_workspace_manifest(
    text: &str,
    current: &str,
    version: &str,
) -> Result<String, String> {
    let mut in_package = false;
    let mut stamped_package = false;
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_package = trimmed == "[workspace.package]";
        }
        let line = if in_package
            && trimmed.starts_with("version")
            && trimmed.contains(&format!("\"{current}\""))
        {
            stamped_package = true;
            line.replace(&format!("\"{current}\""), &format!("\"{version}\""))
        } else if trimmed.starts_with("ameide-") && trimmed.contains(&format!("\"={current}\"")) {
            line.replace(&format!("\"={current}\""), &format!("\"={version}\""))
        } else {
            line.to_owned()
        };
        out.push_str(&line);
        out.push('\n');
    }
    if stamped_package {
        Ok(out)
    } else {
        Err(format!(
            "no `version = \"{current}\"` under [workspace.package] to stamp"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_tags_are_strict() {
        assert_eq!(
            Release::from_tag("v1.2.3"),
            Some(Release {
                major: 1,
                minor: 2,
                patch: 3
            })
        );
        for bad in [
            "1.2.3",
            "v1.2",
            "v1.2.3.4",
            "v01.2.3",
            "v1.2.3-rc1",
            "v1..3",
            "vx.y.z",
        ] {
            assert_eq!(Release::from_tag(bad), None, "{bad}");
        }
    }

    #[test]
    fn stamping_changes_the_copy_only_where_it_should() {
        let text = "[workspace.package]\nversion = \"0.1.0\"\n\n[workspace.dependencies]\nameide-proto = { path = \"ameide-proto\", version = \"=0.1.0\" }\nserde = \"0.1.0\"\n";
        let out =
            stamp_workspace_manifest(text, "0.1.0", "0.1.1-dev.20261121000000+gabc1234").unwrap();
        assert!(out.contains("version = \"0.1.1-dev.20261121000000+gabc1234\""));
        assert!(out.contains("version = \"=0.1.1-dev.20261121000000+gabc1234\" }"));
        assert!(
            out.contains("serde = \"0.1.0\""),
            "third-party pins untouched"
        );
        assert!(
            stamp_workspace_manifest("[package]\nversion = \"0.1.0\"\n", "0.1.0", "1.0.0").is_err()
        );
    }

    #[test]
    fn utc_stamps_match_known_dates() {
        assert_eq!(utc_stamp(0), "19700101000000");
        assert_eq!(utc_stamp(951_782_400), "20000229000000");
        assert_eq!(utc_stamp(1_795_300_271), "20261121223111");
    }
}
