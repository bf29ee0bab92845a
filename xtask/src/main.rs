//! `cargo xtask`: the project's automation, one subcommand per job.
//!
//! | Command | What it does |
//! |---|---|
//! | `manifest` | regenerates `ameide-proto/manifest/ameide-client.json` from the bundle and roster |
//! | `manifest --check` | fails with a diff when the committed manifest is stale, or the roster and bundle disagree |
//! | `buf-lint` | runs `buf lint` on the bundle (installs `@bufbuild/buf` from npm into `.cache/buf` on first use) |
//! | `bench [--smoke] [--publish] [--no-build-cost] [args…]` | the benchmark suite (release build): raw tonic, `AmeideClient`, each layer alone, grpcio and grpc-js peers, allocations, build cost; `--smoke` runs a short debug pass that proves the harness works; `--publish` writes `docs/benchmarks.json` and the tables in `docs/BENCHMARKS.md` |
//! | `policy` | the guardrails of contract §7 as named checks (see `xtask::policy`) |
//! | `buf-breaking [--against REV]` | `buf breaking` of the bundle against the bundle at `REV` (default `HEAD~1`), from local git history |
//! | `version` | the version from git tags (see `xtask::version`); written to `target/version.txt` and `$GITHUB_OUTPUT` |
//! | `package-smoke` | packages the publishable crates, unpacks them and builds and runs a throwaway consumer against the unpacked packages |
//! | `sync-proto <dir>` | replaces the bundle with a buf module directory, refusing unwired services or lint findings, and regenerates the manifest |
//! | `deny` | `cargo deny check bans licenses sources` with `deny.toml` (cargo-deny installed into the tools cache on first use) |
//! | `release --dry-run` | version, stamped copy, packages and a CycloneDX SBOM (cargo-cyclonedx), without publishing |
//! | `build-cost [default\|lean\|tonic…]` | a hello-world consumer of `ameide-sdk` built cold in release mode, with default features and with none (the client only), beside plain tonic + prost: wall time, crates compiled, binary size (docs/BENCHMARKS.md) |
//! | `semver [--baseline REV]` | cargo-semver-checks (installed into the tools cache on first use) of the published crates against the last release tag, or the last commit that changed the workspace version; a breaking change without a major (0.x: minor) bump fails naming the items |
//! | `parity [runner args…]` | the parity cases (`parity/cases`) against the Rust reference adapter (see `docs/parity.md`) |
//! | `parity-bundle` | `target/parity-bundle/`: the release `ameide-parity` runner and reference adapter with the cases, the Python example and `parity.md`, checked by running it (the release workflow uploads it) |
//! | `soak [--calls N]` | N (default 200,000) calls through one client in release mode; fails if RSS grows past the bound |
//! | `keepalive-soak` | the five-minute keepalive run: grpc-go's default ping policy and the SDK's default settings, a stream silent for 5 minutes survives (`tests/tests/keepalive.rs`, ignored in `cargo test`) |
//! | `fuzz [--seconds N] [TARGET…]` | every cargo-fuzz target in `fuzz/` (or those named) for N seconds each (default 60), from the committed seeds; fails on a crash (cargo-fuzz installed into the tools cache on first use; stable toolchain with `RUSTC_BOOTSTRAP=1`) |
//! | `ci` | everything CI runs: fmt, clippy, tests, manifest check, policy, buf lint and breaking, package smoke, deny, bench smoke, and the keepalive soak in the background from the tests on |

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use ameide_build::Inputs;

mod build_cost;
mod semver;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["manifest"] => manifest(false),
        ["manifest", "--check"] => manifest(true),
        ["buf-lint"] => buf_lint(),
        ["ci"] => ci(),
        ["policy"] => policy(),
        ["buf-breaking"] => buf_breaking("HEAD~1"),
        ["buf-breaking", "--against", rev] => buf_breaking(rev),
        ["version"] => version().map(|_| ()),
        ["package-smoke"] => package_smoke(),
        ["parity-bundle"] => parity_bundle(),
        ["parity", rest @ ..] => parity(rest),
        ["soak", rest @ ..] => soak(rest),
        ["keepalive-soak"] => keepalive_soak(),
        ["sync-proto", source] => sync_proto(Path::new(source)),
        ["deny"] => deny(),
        ["system-packages"] => xtask::system::install(),
        ["fuzz", rest @ ..] => fuzz(rest),
        ["release", "--dry-run"] => release_dry_run(),
        ["bench", rest @ ..] => bench(rest),
        ["semver", rest @ ..] => semver::semver(rest),
        ["build-cost", rest @ ..] => build_cost::build_cost(rest),
        [] | ["help"] | ["--help"] | ["-h"] => {
            print_help();
            Ok(())
        }
        other => Err(format!(
            "unknown arguments {other:?}; run `cargo xtask help`"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The five-minute keepalive test (ignored in `cargo test`): Debian's
/// grpc-go with its default enforcement, the SDK with its defaults.
fn keepalive_soak() -> Result<(), String> {
    xtask::system::install()?;
    run(
        keepalive_tests()
            .args(["--", "--ignored", "--nocapture"])
            .env("AMEIDE_REQUIRE_NGINX", "1"),
        "the keepalive soak",
    )
}

/// `cargo test` of `tests/tests/keepalive.rs`, to which the caller adds.
fn keepalive_tests() -> Command {
    let mut command = cargo();
    command
        .args([
            "test",
            "-p",
            "ameide-tests",
            "--locked",
            "--test",
            "keepalive",
        ])
        .current_dir(workspace_root());
    command
}

/// The keepalive soak CI runs in the background while its other steps run
/// (it is five minutes of waiting on a quiet stream).
static SOAK: std::sync::Mutex<Option<std::process::Child>> = std::sync::Mutex::new(None);

/// Starts the built keepalive test binary with `--ignored` in the background.
fn keepalive_soak_start() -> Result<(), String> {
    let output = keepalive_tests()
        .arg("--no-run")
        .output()
        .map_err(|e| format!("cannot run cargo test --no-run: {e}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!("cargo test --no-run failed: {stderr}"));
    }
    // "  Executable tests/keepalive.rs (target/debug/deps/keepalive-…)"
    let binary = stderr
        .lines()
        .find_map(|line| {
            let rest = line
                .trim()
                .strip_prefix("Executable tests/keepalive.rs (")?;
            rest.strip_suffix(')')
        })
        .ok_or_else(|| format!("no keepalive test executable in: {stderr}"))?;
    let child = Command::new(workspace_root().join(binary))
        .args(["--ignored", "--test-threads", "2"])
        .env("AMEIDE_REQUIRE_NGINX", "1")
        .current_dir(workspace_root().join("tests"))
        .spawn()
        .map_err(|e| format!("cannot start {binary}: {e}"))?;
    println!("keepalive soak started in the background ({binary} --ignored)");
    *SOAK.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
    Ok(())
}

/// Waits for the background keepalive soak; its failure fails CI.
fn keepalive_soak_join() -> Result<(), String> {
    let child = SOAK.lock().unwrap_or_else(|p| p.into_inner()).take();
    let Some(mut child) = child else {
        return Err("the keepalive soak was not started".to_owned());
    };
    let status = child
        .wait()
        .map_err(|e| format!("cannot wait for the keepalive soak: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("the keepalive soak exited with {status}"))
    }
}

fn print_help() {
    println!(
        "cargo xtask <command>\n\n\
         manifest            regenerate ameide-proto/manifest/ameide-client.json\n\
         manifest --check    fail with a diff when the manifest is stale or unwired\n\
         buf-lint            buf lint the proto bundle (installs buf from npm into .cache/buf)\n\
         bench [--smoke] [--publish] [args]  benchmark suite (release build; see docs/BENCHMARKS.md)\n\
         policy              guardrails: proto deps, build-script codegen, patch/git, lockfile, manifest, lint\n\
         buf-breaking [--against REV]  buf breaking against the bundle at REV (default HEAD~1)\n\
         version             version from git tags (release on vX.Y.Z, dev build otherwise)\n\
         package-smoke       cargo package, unpack, build and run a throwaway consumer\n\
         sync-proto <dir>    replace the bundle with a buf module directory, regenerate the manifest\n\
         deny                cargo deny check bans licenses sources\n\
         system-packages     apt-get install nginx, openssl, golang-go, golang-google-grpc-dev, tinyproxy, dnsmasq-base when missing (no service started)\n\
         fuzz [--seconds N] [T…]  run the cargo-fuzz targets (default 60 s each)\n\
         release --dry-run   version, stamped copy, packages, SBOM; publishes nothing\n\
         build-cost [V…]     cold release builds of a consumer: default features, lean, plain tonic\n\
         semver [--baseline REV]  cargo-semver-checks of the published crates against the last release tag\n\
                             (or the last version bump); a breaking change needs a major (0.x: minor) bump\n\
         parity [args]       run the parity cases against the Rust reference adapter\n\
         parity-bundle       the release parity runner, adapter and cases in target/parity-bundle\n\
         soak [args]         200k calls through one client; fails if RSS grows past 10 MiB\n\
         keepalive-soak      a stream silent for 5 minutes against grpc-go's default ping policy\n\
         ci                  everything CI runs"
    );
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
        .to_owned()
}

fn proto_inputs() -> Result<Inputs, String> {
    Inputs::load(&workspace_root().join("ameide-proto")).map_err(|e| e.to_string())
}

fn manifest(check: bool) -> Result<(), String> {
    let inputs = proto_inputs()?;
    inputs.check_wiring().map_err(|e| e.to_string())?;
    if check {
        inputs.check_manifest()?;
        println!("manifest is up to date ({})", inputs.bundle.digest());
        return Ok(());
    }
    let path = inputs.manifest_path();
    let rendered = inputs.render_manifest();
    let unchanged = std::fs::read_to_string(&path).is_ok_and(|old| old == rendered);
    if !unchanged {
        std::fs::write(&path, rendered)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    println!(
        "{} {} ({} services, {} methods)",
        if unchanged { "unchanged" } else { "wrote" },
        path.display(),
        inputs.roster.entries().len(),
        inputs
            .services
            .iter()
            .map(|s| s.methods.len())
            .sum::<usize>()
    );
    Ok(())
}

/// Path of the project-local `buf` binary, installing it from npm when missing.
fn buf_binary() -> Result<PathBuf, String> {
    xtask::buf::binary(&workspace_root())
}

fn buf_lint() -> Result<(), String> {
    match xtask::policy::check_bundle_lint(&workspace_root().join("ameide-proto"), &buf_binary()?) {
        None => {
            println!("buf lint: no findings");
            Ok(())
        }
        Some(finding) => {
            eprintln!("{finding}");
            Err("buf lint reports findings".into())
        }
    }
}

/// Builds and runs `ameide-bench run`. Reports, never gates: timing is not
/// asserted anywhere. `--smoke` uses a debug build and a tiny duration;
/// `--publish` copies the report into `docs/`; `--no-build-cost` skips the
/// cold-build measurement. Other arguments go to `ameide-bench run`.
fn bench(args: &[&str]) -> Result<(), String> {
    let root = workspace_root();
    let smoke = args.contains(&"--smoke");
    let publish = args.contains(&"--publish");
    let build_cost = !smoke && !args.contains(&"--no-build-cost");
    let passed: Vec<&str> = args
        .iter()
        .copied()
        .filter(|a| !["--smoke", "--publish", "--no-build-cost"].contains(a))
        .collect();
    let profile = if smoke { "debug" } else { "release" };
    let mut build = cargo();
    build.args(["build", "--locked"]).current_dir(&root);
    if smoke {
        // The whole workspace, so features (and artifacts) match the test
        // build CI has just made: no rebuild.
        build.arg("--workspace");
    } else {
        build.args(["--release", "-p", "ameide-bench"]);
    }
    run(&mut build, "cargo build (ameide-bench)")?;
    let out = root.join(if smoke {
        "target/bench-smoke"
    } else {
        "target/bench"
    });
    let mut command = Command::new(root.join("target").join(profile).join("ameide-bench"));
    command
        .arg("run")
        .current_dir(&root)
        .env(
            "AMEIDE_BENCH_COMMAND",
            format!("cargo xtask bench {}", args.join(" ")).trim_end(),
        )
        .arg("--out")
        .arg(&out);
    if build_cost {
        let file = measure_build_cost(&root)?;
        command.arg("--build-cost").arg(file);
    }
    if smoke {
        command.args([
            "--duration-ms",
            "100",
            "--rounds",
            "1",
            "--concurrency",
            "1,8",
            "--stream-messages",
            "4",
            "--no-instructions",
            "--target-rounds",
            "2",
            "--target-window-ms",
            "50",
            "--balancing-rounds",
            "1",
            "--tail-rounds",
            "1",
        ]);
    }
    command.args(&passed);
    run(&mut command, "ameide-bench run")?;
    if publish {
        publish_bench(&root, &out)?;
    }
    Ok(())
}

/// Cold `cargo build -p ameide-sdk` in an empty target dir, then the rebuild
/// after touching one `.proto`; writes and returns `target/bench/build.json`.
fn measure_build_cost(root: &Path) -> Result<PathBuf, String> {
    let target = root.join("target/bench-build-cost");
    let _ = std::fs::remove_dir_all(&target);
    let timed = |what: &str| -> Result<f64, String> {
        let started = std::time::Instant::now();
        run(
            cargo()
                .args(["build", "--locked", "-q", "-p", "ameide-sdk"])
                .env("CARGO_TARGET_DIR", &target)
                .current_dir(root),
            what,
        )?;
        Ok(started.elapsed().as_secs_f64())
    };
    eprintln!("measuring the cold build of ameide-sdk (empty target dir)…");
    let cold = timed("cold cargo build -p ameide-sdk")?;
    let proto = root.join("ameide-proto/proto/ameide_core_proto/graph/v1/graph.proto");
    std::fs::File::options()
        .append(true)
        .open(&proto)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()))
        .map_err(|e| format!("touch {}: {e}", proto.display()))?;
    let touched = timed("rebuild after touching graph.proto")?;
    let _ = std::fs::remove_dir_all(&target);
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let file = dir.join("build.json");
    let json = format!(
        "{{\n  \"cold_build_s\": {cold:.1},\n  \"touch_proto_rebuild_s\": {touched:.1},\n  \"what\": \"cargo build --locked -p ameide-sdk, debug profile, CARGO_TARGET_DIR=target/bench-build-cost (removed first); registry sources already downloaded\"\n}}\n"
    );
    std::fs::write(&file, json).map_err(|e| e.to_string())?;
    eprintln!("build cost: cold {cold:.1} s, after touching a .proto {touched:.1} s");
    Ok(file)
}

/// Copies `report.json` to `docs/benchmarks.json` and replaces the generated
/// part of `docs/BENCHMARKS.md` (between the `bench:begin`/`bench:end` markers).
fn publish_bench(root: &Path, out: &Path) -> Result<(), String> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    let json = read(&out.join("report.json"))?;
    let md = read(&out.join("report.md"))?;
    std::fs::write(root.join("docs/benchmarks.json"), json).map_err(|e| e.to_string())?;
    let doc_path = root.join("docs/BENCHMARKS.md");
    let doc = read(&doc_path)?;
    let (begin, end) = ("<!-- bench:begin -->", "<!-- bench:end -->");
    let (Some(a), Some(b)) = (doc.find(begin), doc.find(end)) else {
        return Err(format!(
            "{} lacks the {begin} / {end} markers",
            doc_path.display()
        ));
    };
    let updated = format!("{}{begin}\n{md}{}", &doc[..a], &doc[b..]);
    std::fs::write(&doc_path, updated).map_err(|e| e.to_string())?;
    eprintln!("published docs/benchmarks.json and the tables in docs/BENCHMARKS.md");
    Ok(())
}

/// A `cargo` command without the package variables `cargo run` set for xtask
/// itself: leaked into a nested build they change build-script fingerprints
/// and force a full rebuild.
fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || matches!(
                name.as_ref(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_RUSTC_CURRENT_DIR"
            )
        {
            command.env_remove(name.as_ref());
        }
    }
    command
}

fn ci() -> Result<(), String> {
    let root = workspace_root();
    type Step = (&'static str, Box<dyn Fn() -> Result<(), String>>);
    let steps: Vec<Step> = vec![
        (
            "fmt",
            Box::new(|| {
                run(
                    cargo()
                        .args(["fmt", "--all", "--", "--check"])
                        .current_dir(workspace_root()),
                    "cargo fmt --check",
                )
            }),
        ),
        (
            "clippy",
            Box::new(|| {
                run(
                    cargo()
                        .args([
                            "clippy",
                            "--workspace",
                            "--all-targets",
                            "--locked",
                            "--",
                            "-D",
                            "warnings",
                        ])
                        .current_dir(workspace_root()),
                    "cargo clippy",
                )
            }),
        ),
        ("system packages", Box::new(xtask::system::install)),
        (
            "test",
            Box::new(|| {
                run(
                    cargo()
                        .args(["test", "--workspace", "--locked"])
                        // The proxy tests fail, rather than skip, without nginx.
                        .env("AMEIDE_REQUIRE_NGINX", "1")
                        .current_dir(workspace_root()),
                    "cargo test",
                )
            }),
        ),
        ("keepalive soak (start)", Box::new(keepalive_soak_start)),
        ("manifest --check", Box::new(|| manifest(true))),
        ("buf-lint", Box::new(buf_lint)),
        ("policy", Box::new(policy)),
        ("buf-breaking", Box::new(|| buf_breaking("HEAD~1"))),
        ("package-smoke", Box::new(package_smoke)),
        ("semver", Box::new(|| semver::semver(&[]))),
        ("deny", Box::new(deny)),
        ("parity", Box::new(|| parity(&[]))),
        ("fuzz --seconds 10", Box::new(|| fuzz(&["--seconds", "10"]))),
        ("bench --smoke", Box::new(|| bench(&["--smoke"]))),
        ("keepalive soak (join)", Box::new(keepalive_soak_join)),
    ];
    let started = Instant::now();
    let mut report = Vec::new();
    for (name, step) in &steps {
        println!("\n=== xtask ci: {name}");
        let t = Instant::now();
        let outcome = step();
        report.push((*name, t.elapsed(), outcome.is_ok()));
        if let Err(e) = outcome {
            print_report(&report);
            if let Some(mut soak) = SOAK.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = soak.kill();
                let _ = soak.wait();
            }
            return Err(format!("step `{name}` failed: {e}"));
        }
    }
    print_report(&report);
    println!(
        "xtask ci: all {} steps passed in {:.1?} ({})",
        steps.len(),
        started.elapsed(),
        root.display()
    );
    Ok(())
}

fn print_report(report: &[(&str, std::time::Duration, bool)]) {
    println!("\n--- xtask ci summary");
    // CI's disk is shared and small: the build's footprint is part of the report.
    if let Ok(out) = Command::new("du")
        .args(["-sh", "target", "fuzz/target"])
        .current_dir(workspace_root())
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            println!("disk: {line}");
        }
    }
    for (name, took, ok) in report {
        println!(
            "{:<18} {:>8.1?}  {}",
            name,
            took,
            if *ok { "ok" } else { "FAILED" }
        );
    }
}

fn run(command: &mut Command, what: &str) -> Result<(), String> {
    let status = command
        .status()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} exited with {status}"))
    }
}

fn policy() -> Result<(), String> {
    let root = workspace_root();
    let mut findings = xtask::policy::check_sources(&root)?;
    let cargo_bin = std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from);
    findings.extend(xtask::policy::check_locked(&root, &cargo_bin));
    findings.extend(xtask::policy::check_manifest_fresh(
        &root.join("ameide-proto"),
    ));
    findings.extend(xtask::policy::check_bundle_lint(
        &root.join("ameide-proto"),
        &buf_binary()?,
    ));
    let src = root.join("ameide-sdk/src");
    for message in xtask::layering::problems(&xtask::layering::graph(&src)?) {
        findings.push(xtask::policy::Finding {
            check: "layering",
            file: src.clone(),
            line: None,
            message,
        });
    }
    if findings.is_empty() {
        println!(
            "policy: all checks pass (proto-dependency, build-script-codegen, patch-or-git, lockfile, manifest-fresh, bundle-lint, layering)"
        );
        return Ok(());
    }
    for finding in &findings {
        eprintln!("{finding}");
    }
    Err(format!("{} policy finding(s)", findings.len()))
}

/// `buf breaking` against the bundle at `rev` (see `xtask::breaking`).
fn buf_breaking(rev: &str) -> Result<(), String> {
    use xtask::breaking::Outcome;
    match xtask::breaking::check(&workspace_root(), rev, &buf_binary()?)? {
        Outcome::NoBaseline(why) => println!("buf-breaking: {why}; nothing to compare against"),
        Outcome::Clean => println!("buf-breaking: no breaking changes against {rev}"),
        Outcome::CoveredByMajorBump(findings) => println!(
            "buf-breaking: breaking changes against {rev} are covered by a major-version package bump:\n{findings}"
        ),
        Outcome::Breaking(findings) => {
            eprintln!("{findings}");
            return Err(format!(
                "buf breaking found breaking changes against {rev}: add a new major version package (…/v2) instead of changing v1"
            ));
        }
    }
    Ok(())
}

fn version() -> Result<String, String> {
    let root = workspace_root();
    let computed = xtask::version::compute(&root)?;
    let version = computed.version();
    println!(
        "{version}{}",
        if computed.is_release() {
            " (release)"
        } else {
            " (dev build)"
        }
    );
    let file = root.join("target").join("version.txt");
    std::fs::create_dir_all(file.parent().expect("target/ has a parent"))
        .map_err(|e| e.to_string())?;
    std::fs::write(&file, format!("{version}\n"))
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    if let Some(output) = std::env::var_os("GITHUB_OUTPUT") {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&output)
            .map_err(|e| format!("cannot open $GITHUB_OUTPUT: {e}"))?;
        writeln!(f, "version={version}\nrelease={}", computed.is_release())
            .map_err(|e| e.to_string())?;
    }
    Ok(version)
}

/// The crates that are published, in dependency order.
const PUBLISHED: &[&str] = &["ameide-build", "ameide-proto", "ameide-sdk"];

/// `cargo package` the publishable crates (verifying each builds from its
/// package alone), unpack them, and build and run a throwaway consumer whose
/// only view of our crates is the unpacked packages.
fn package_smoke() -> Result<(), String> {
    let root = workspace_root();
    package_crates(&root, &root)?;
    let work = root.join("target").join("package-smoke");
    let _ = std::fs::remove_dir_all(&work);
    let unpacked = work.join("unpacked");
    std::fs::create_dir_all(&unpacked).map_err(|e| e.to_string())?;
    let version = env!("CARGO_PKG_VERSION");
    for krate in PUBLISHED {
        let file = root
            .join("target/package")
            .join(format!("{krate}-{version}.crate"));
        run(
            Command::new("tar")
                .arg("-xzf")
                .arg(&file)
                .arg("-C")
                .arg(&unpacked),
            &format!("unpack {krate}"),
        )?;
        let listing = Command::new("tar")
            .arg("-tzf")
            .arg(&file)
            .output()
            .map_err(|e| e.to_string())?;
        let listing = String::from_utf8_lossy(&listing.stdout);
        let required: &[&str] = match *krate {
            "ameide-proto" => &[
                "build.rs",
                "buf.yaml",
                "manifest/roster.json",
                "manifest/ameide-client.json",
                "proto/ameide_core_proto/graph/v1/graph.proto",
            ],
            "ameide-build" => &["src/lib.rs"],
            _ => &["src/lib.rs"],
        };
        for needed in required {
            if !listing.lines().any(|l| l.ends_with(needed)) {
                return Err(format!("the {krate} package misses {needed}"));
            }
        }
    }
    let consumer = work.join("consumer");
    std::fs::create_dir_all(consumer.join("src")).map_err(|e| e.to_string())?;
    let dir = |k: &str| {
        unpacked
            .join(format!("{k}-{version}"))
            .display()
            .to_string()
    };
    std::fs::write(
        consumer.join("Cargo.toml"),
        format!(
            "[package]\nname = \"ameide-consumer-smoke\"\nversion = \"0.0.0\"\nedition = \"2024\"\npublish = false\n\n\
             [dependencies]\nameide-sdk = {{ path = {sdk:?}, features = [\"testkit\"] }}\n\
             tokio = {{ version = \"1\", features = [\"rt-multi-thread\", \"macros\"] }}\n\n\
             # Our other crates as a registry consumer would get them: from their packages.\n\
             [patch.crates-io]\nameide-proto = {{ path = {proto:?} }}\nameide-build = {{ path = {build:?} }}\n\n[workspace]\n",
            sdk = dir("ameide-sdk"),
            proto = dir("ameide-proto"),
            build = dir("ameide-build"),
        ),
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(consumer.join("src/main.rs"), CONSUMER_MAIN).map_err(|e| e.to_string())?;
    // Reuse the workspace's lockfile versions and build cache; --offline proves
    // nothing of ours is fetched from a registry.
    std::fs::copy(root.join("Cargo.lock"), consumer.join("Cargo.lock"))
        .map_err(|e| e.to_string())?;
    run(
        cargo()
            .args(["run", "--offline", "--quiet"])
            .env("CARGO_TARGET_DIR", root.join("target"))
            .current_dir(&consumer),
        "the package-smoke consumer",
    )?;
    // The packaged crate's docs as docs.rs builds them: its
    // `[package.metadata.docs.rs]` features and `--cfg docsrs` (whose
    // `feature(doc_cfg)` needs nightly, or RUSTC_BOOTSTRAP=1 on stable).
    run(
        cargo()
            .args([
                "doc",
                "--offline",
                "--quiet",
                "--no-deps",
                // The consumer's dependency turns on what docs.rs does:
                // the defaults (oauth2, server) and testkit.
                "-p",
                "ameide-sdk",
            ])
            // A target directory of its own: RUSTC_BOOTSTRAP changes what
            // some build scripts (proc-macro2's) detect, which would rebuild
            // the shared one's proc-macro stack, twice per CI run.
            .env("CARGO_TARGET_DIR", root.join("target/package-smoke-doc"))
            .env("RUSTDOCFLAGS", "--cfg docsrs -D warnings")
            .env("RUSTC_BOOTSTRAP", "1")
            .current_dir(&consumer),
        "the packaged ameide-sdk's docs (as docs.rs builds them)",
    )?;
    println!(
        "package-smoke: the packaged crates build and work for a registry consumer, and their docs build"
    );
    Ok(())
}

/// Packages the publishable crates of the workspace at `dir` (verifying
/// each), writing `.crate` files under `root/target/package`.
fn package_crates(dir: &Path, root: &Path) -> Result<(), String> {
    forget_stale_local_packages();
    forget_stale_package_builds(&root.join("target"));
    let mut command = cargo();
    command
        .arg("package")
        .arg("--locked")
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", root.join("target"));
    if dir != root {
        command.arg("--allow-dirty");
    }
    for krate in PUBLISHED {
        command.args(["-p", krate]);
    }
    if xtask::git(dir, &["status", "--porcelain"]).is_ok_and(|s| !s.is_empty()) {
        command.arg("--allow-dirty");
    }
    run(&mut command, "cargo package")
}

/// `cargo package` verifies each crate against the others through a
/// temporary local registry under the target dir, and cargo extracts those
/// `.crate`s into `$CARGO_HOME/registry/src/-<hash of the path>/` without
/// checking an existing extraction: a second packaging at the same path (a
/// CI clone at a fixed path, a rerun) would build against the previous
/// run's sources. Our own crates' extractions in those local registries
/// (never crates.io's, whose directory is named after its host) are removed.
fn forget_stale_local_packages() {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let Some(src) = home.map(|h| h.join("registry/src")) else {
        return;
    };
    let Ok(registries) = std::fs::read_dir(&src) else {
        return;
    };
    for registry in registries.flatten() {
        if !registry.file_name().to_string_lossy().starts_with('-') {
            continue;
        }
        let Ok(crates) = std::fs::read_dir(registry.path()) else {
            continue;
        };
        for krate in crates.flatten() {
            let name = krate.file_name().to_string_lossy().into_owned();
            if PUBLISHED.iter().any(|p| name.starts_with(&format!("{p}-"))) {
                let _ = std::fs::remove_dir_all(krate.path());
            }
        }
    }
}

/// The same staleness one level down: `cargo package` verifies each crate
/// against the others' packages, built into the shared target dir under a
/// package id (name, version, local registry path) that is the same on
/// every run, and cargo trusts a registry package's build without looking
/// at its sources again. A verification would link the previous run's
/// `ameide-proto` (it did: "cannot find type `ErrorStamp`"). Every build of
/// our crates from such a registry (its dep-info names a
/// `registry/src/-<hash>` path) loses its fingerprint, so it is rebuilt.
fn forget_stale_package_builds(target: &Path) {
    let debug = target.join("debug");
    let fingerprints = debug.join(".fingerprint");
    let from_local_registry = |dep_info: &Path| {
        std::fs::read_to_string(dep_info).is_ok_and(|text| {
            text.contains("/registry/src/-")
                && PUBLISHED.iter().any(|k| text.contains(&format!("/{k}-")))
        })
    };
    // Libraries: deps/<crate_name>-<hash>.d ↔ .fingerprint/<crate-name>-<hash>.
    if let Ok(entries) = std::fs::read_dir(debug.join("deps")) {
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(stem) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".d"))
            else {
                continue;
            };
            let ours = PUBLISHED
                .iter()
                .any(|k| stem.starts_with(&format!("{}-", k.replace('-', "_"))));
            if ours && from_local_registry(&path) {
                let _ = std::fs::remove_dir_all(fingerprints.join(stem.replace('_', "-")));
            }
        }
    }
    // Build scripts: build/<crate-name>-<hash>/*.d ↔ .fingerprint/<crate-name>-<hash>.
    if let Ok(entries) = std::fs::read_dir(debug.join("build")) {
        for entry in entries.flatten() {
            let dir = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if !PUBLISHED.iter().any(|k| name.starts_with(&format!("{k}-"))) {
                continue;
            }
            let stale = std::fs::read_dir(&dir).is_ok_and(|files| {
                files.flatten().any(|f| {
                    let p = f.path();
                    p.extension().is_some_and(|e| e == "d") && from_local_registry(&p)
                })
            });
            if stale {
                let _ = std::fs::remove_dir_all(fingerprints.join(&name));
            }
        }
    }
}

const CONSUMER_MAIN: &str = r#"//! Built by `cargo xtask package-smoke` against the unpacked packages.
use ameide_sdk::proto::graph::v1::ListRepositoriesRequest;
use ameide_sdk::testkit::{serve_tcp, MockServer, Reply};
use ameide_sdk::{AmeideClient, IntoAmeideResult};

#[tokio::main]
async fn main() {
    let server = MockServer::new();
    let path = "/ameide_core_proto.graph.v1.GraphService/ListRepositories";
    server.push(path, Reply::status(ameide_sdk::tonic::Status::unavailable("warming up")));
    let addr = serve_tcp(server.clone()).await.expect("loopback server");
    let client = AmeideClient::builder()
        .endpoint(format!("http://{addr}"))
        .tenant_id("smoke-tenant")
        .build()
        .expect("client");
    let response = client.graph().list_repositories(ListRepositoriesRequest::default()).await.into_ameide().expect("call");
    let attempts = server.attempts_for(path);
    assert_eq!(attempts.len(), 2, "retried once");
    assert_eq!(attempts[1].header("x-tenant-id"), Some("smoke-tenant"));
    assert_eq!(ameide_sdk::methods::ROSTER.len(), 15, "the packaged bundle has the whole roster");
    assert!(!ameide_sdk::proto::DESCRIPTOR_SET.is_empty());
    println!("consumer: {} repositories after {} attempts via the packaged ameide-sdk",
        response.get_ref().repositories.len(), attempts.len());
}
"#;

/// Replaces the bundle with the `.proto` files of a buf module directory.
fn sync_proto(source: &Path) -> Result<(), String> {
    let root = workspace_root();
    if !source.is_dir() {
        return Err(format!(
            "{} is not a directory: give a buf module directory (the one holding buf.yaml and the ameide_core_proto/ tree). \
             Descriptor-set images carry no source text to commit as a bundle; export the module with `buf export <input> -o <dir>` first",
            source.display()
        ));
    }
    let crate_dir = root.join("ameide-proto");
    let staging = std::env::temp_dir().join(format!("ameide-sync-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    copy_tree(&crate_dir.join("manifest"), &staging.join("manifest"))?;
    std::fs::copy(crate_dir.join("buf.yaml"), staging.join("buf.yaml"))
        .map_err(|e| e.to_string())?;
    let module_root = if source.join("proto").join("ameide_core_proto").is_dir() {
        source.join("proto")
    } else {
        source.to_owned()
    };
    copy_protos(&module_root, &staging.join("proto"))?;
    let inputs = ameide_build::Inputs::load(&staging)
        .map_err(|e| format!("the new bundle does not compile: {e}"))?;
    if let Err(e) = inputs.check_wiring() {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(format!("refusing to sync: {e}"));
    }
    let buf = buf_binary()?;
    let lint = Command::new(buf)
        .arg("lint")
        .current_dir(&staging)
        .output()
        .map_err(|e| e.to_string())?;
    if !lint.status.success() {
        let findings = String::from_utf8_lossy(&lint.stdout).into_owned();
        let _ = std::fs::remove_dir_all(&staging);
        return Err(format!(
            "refusing to sync: buf lint reports findings in the new bundle:\n{findings}"
        ));
    }
    let _ = std::fs::remove_dir_all(crate_dir.join("proto"));
    copy_tree(&staging.join("proto"), &crate_dir.join("proto"))?;
    let _ = std::fs::remove_dir_all(&staging);
    manifest(false)?;
    println!(
        "sync-proto: bundle replaced from {}; review `git diff`, then build",
        source.display()
    );
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
    for entry in
        std::fs::read_dir(from).map_err(|e| format!("cannot read {}: {e}", from.display()))?
    {
        let entry = entry.map_err(|e| e.to_string())?;
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .map_err(|e| format!("cannot copy {}: {e}", entry.path().display()))?;
        }
    }
    Ok(())
}

fn copy_protos(from: &Path, to: &Path) -> Result<(), String> {
    for entry in
        std::fs::read_dir(from).map_err(|e| format!("cannot read {}: {e}", from.display()))?
    {
        let entry = entry.map_err(|e| e.to_string())?;
        let path = entry.path();
        if path.is_dir() {
            copy_protos(&path, &to.join(entry.file_name()))?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            std::fs::create_dir_all(to).map_err(|e| e.to_string())?;
            std::fs::copy(&path, to.join(entry.file_name())).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Where cargo-installed tools live: outside the clone, so CI on the same
/// machine installs them once.
fn tools_root() -> PathBuf {
    std::env::var_os("AMEIDE_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("ameide-sdk/tools"))
        })
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ameide-sdk/tools"))
        })
        .unwrap_or_else(|| workspace_root().join(".cache/tools"))
}

/// A cargo-installed tool at a pinned version, installed from crates.io when missing.
fn cargo_tool(krate: &str, binary: &str, version: &str) -> Result<PathBuf, String> {
    let root = tools_root();
    let bin = root.join("bin").join(binary);
    let current = Command::new(&bin).arg("--version").output();
    if current
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(version))
    {
        return Ok(bin);
    }
    println!(
        "installing {krate} {version} into {} (once per machine)",
        root.display()
    );
    run(
        cargo()
            .args([
                "install",
                "--locked",
                "--quiet",
                krate,
                "--version",
                version,
                "--root",
            ])
            .arg(&root),
        &format!("cargo install {krate}"),
    )?;
    Ok(bin)
}

/// The cargo-fuzz release `cargo xtask fuzz` runs.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Runs the fuzz targets in `fuzz/` from their seeds; a crash fails.
fn fuzz(args: &[&str]) -> Result<(), String> {
    let mut seconds = 60u64;
    let mut wanted = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match *arg {
            "--seconds" => {
                seconds = rest
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&s| s > 0)
                    .ok_or("--seconds takes a whole number of seconds > 0")?;
            }
            target => wanted.push(target.to_owned()),
        }
    }
    let dir = workspace_root().join("fuzz");
    let mut targets: Vec<String> = std::fs::read_dir(dir.join("fuzz_targets"))
        .map_err(|e| format!("reading fuzz/fuzz_targets: {e}"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".rs"))
                .map(str::to_owned)
        })
        .collect();
    targets.sort();
    if !wanted.is_empty() {
        for w in &wanted {
            if !targets.contains(w) {
                return Err(format!(
                    "unknown fuzz target {w:?} (known: {})",
                    targets.join(", ")
                ));
            }
        }
        targets.retain(|t| wanted.contains(t));
    }
    let tool = cargo_tool("cargo-fuzz", "cargo-fuzz", CARGO_FUZZ_VERSION)?;
    // The stable toolchain runs cargo-fuzz's unstable flags with RUSTC_BOOTSTRAP=1;
    // no sanitizer: the SDK is safe Rust, and the targets check what must hold.
    run(
        Command::new(&tool)
            .args(["fuzz", "build", "-O", "-s", "none"])
            .env("RUSTC_BOOTSTRAP", "1")
            .current_dir(&dir),
        "cargo fuzz build",
    )?;
    let mut rows = Vec::new();
    for target in &targets {
        let corpus = dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus).map_err(|e| format!("{}: {e}", corpus.display()))?;
        let started = Instant::now();
        let output = Command::new(&tool)
            .args(["fuzz", "run", "-O", "-s", "none", target])
            .arg(&corpus)
            .arg(dir.join("seeds").join(target))
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-rss_limit_mb=2048",
                "-print_final_stats=1",
            ])
            .env("RUSTC_BOOTSTRAP", "1")
            .current_dir(&dir)
            .output()
            .map_err(|e| format!("running cargo fuzz run {target}: {e}"))?;
        let log = String::from_utf8_lossy(&output.stderr);
        let runs = log
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| "?".into());
        let ok = output.status.success();
        println!(
            "fuzz {target:<16} {runs:>12} runs in {:>5.1?}  {}",
            started.elapsed(),
            if ok { "0 crashes" } else { "CRASH" }
        );
        if !ok {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!("{}", tail.join("\n"));
        }
        rows.push((target.clone(), runs, ok));
    }
    let crashed: Vec<&str> = rows.iter().filter(|r| !r.2).map(|r| r.0.as_str()).collect();
    if !crashed.is_empty() {
        return Err(format!(
            "fuzz targets crashed: {} (inputs in fuzz/artifacts/)",
            crashed.join(", ")
        ));
    }
    println!("fuzz: {} targets, {seconds} s each, 0 crashes", rows.len());
    Ok(())
}

/// The cargo-deny release the dependency policy runs.
const CARGO_DENY_VERSION: &str = "0.20.2";
/// The cargo-cyclonedx release that writes the SBOM.
const CARGO_CYCLONEDX_VERSION: &str = "0.5.9";

fn deny() -> Result<(), String> {
    let tool = cargo_tool("cargo-deny", "cargo-deny", CARGO_DENY_VERSION)?;
    // cargo-deny reads the metadata of every platform's dependencies
    // offline; a build downloads only the host's (rustls-native-certs pulls
    // Windows and macOS crates), so fetch them all first.
    run(
        cargo()
            .args(["fetch", "--locked", "--quiet"])
            .current_dir(workspace_root()),
        "cargo fetch",
    )?;
    run(
        Command::new(tool)
            .args(["--offline", "check", "bans", "licenses", "sources"])
            .current_dir(workspace_root()),
        "cargo deny check bans licenses sources",
    )?;
    println!(
        "deny: bans, licenses and sources pass (advisories need the online database; see README)"
    );
    Ok(())
}

/// Everything a release does but publishing: the version, a stamped copy of
/// the workspace (the source tree keeps its one version), packages from the
/// copy, and a CycloneDX SBOM per published crate.
fn release_dry_run() -> Result<(), String> {
    let root = workspace_root();
    let version = version()?;
    let out = root.join("target").join("release-dry-run");
    let _ = std::fs::remove_dir_all(&out);
    let copy = out.join("workspace");
    let tracked = xtask::git(&root, &["ls-files"])?;
    for file in tracked.lines() {
        let target = copy.join(file);
        std::fs::create_dir_all(target.parent().expect("a file has a parent"))
            .map_err(|e| e.to_string())?;
        std::fs::copy(root.join(file), &target).map_err(|e| format!("cannot copy {file}: {e}"))?;
    }
    let manifest_path = copy.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest_path).map_err(|e| e.to_string())?;
    let current = env!("CARGO_PKG_VERSION");
    let stamped = xtask::version::stamp_workspace_manifest(&text, current, &version)?;
    std::fs::write(&manifest_path, stamped).map_err(|e| e.to_string())?;
    run(
        cargo()
            .args(["update", "--offline", "--workspace", "--quiet"])
            .current_dir(&copy),
        "cargo update (stamped copy)",
    )?;
    let mut package = cargo();
    package
        .args(["package", "--offline", "--allow-dirty", "--no-verify"])
        .env("CARGO_TARGET_DIR", out.join("target"))
        .current_dir(&copy);
    for krate in PUBLISHED {
        package.args(["-p", krate]);
    }
    run(&mut package, "cargo package (stamped copy)")?;
    let cyclonedx = cargo_tool(
        "cargo-cyclonedx",
        "cargo-cyclonedx",
        CARGO_CYCLONEDX_VERSION,
    )?;
    run(
        Command::new(cyclonedx)
            .args(["cyclonedx", "--format", "json", "--spec-version", "1.5"])
            .current_dir(&copy),
        "cargo cyclonedx",
    )?;
    let sbom_dir = out.join("sbom");
    std::fs::create_dir_all(&sbom_dir).map_err(|e| e.to_string())?;
    for krate in PUBLISHED {
        let dir = copy.join(match *krate {
            "ameide-build" => "build-tools",
            other => other,
        });
        let produced = std::fs::read_dir(&dir)
            .map_err(|e| e.to_string())?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(".cdx.json"))
            .ok_or_else(|| format!("cargo cyclonedx wrote no SBOM for {krate}"))?;
        std::fs::copy(
            &produced,
            sbom_dir.join(format!("{krate}-{version}.cdx.json")),
        )
        .map_err(|e| e.to_string())?;
    }
    println!(
        "release --dry-run: version {version}; packages in {}; SBOMs in {}; would publish, in order: {}",
        out.join("target/package").display(),
        sbom_dir.display(),
        PUBLISHED.join(" → ")
    );
    Ok(())
}

/// Builds the parity harness and runs every case against the Rust reference
/// adapter (or `--adapter`); extra arguments go to the runner.
fn parity(args: &[&str]) -> Result<(), String> {
    let root = workspace_root();
    run(
        cargo()
            .args(["build", "--locked", "--workspace"])
            .current_dir(&root),
        "cargo build (parity)",
    )?;
    let mut runner = Command::new(root.join("target/debug/ameide-parity"));
    runner.arg("run").args(args).current_dir(&root);
    // The reference adapter has a server side: it may skip nothing.
    if !args.contains(&"--adapter") {
        runner.arg("--no-skip");
    }
    run(&mut runner, "ameide-parity run")
}

/// The parity runner as the other SDKs' CI takes it: `target/parity-bundle/`
/// with `ameide-parity` and the reference adapter (release builds), the
/// cases beside them (the runner's default there), the thin Python example
/// and `parity.md`; checked by running the bundle's own runner on it.
fn parity_bundle() -> Result<(), String> {
    let root = workspace_root();
    run(
        cargo()
            .args(["build", "--locked", "--release", "-p", "ameide-parity"])
            .current_dir(&root),
        "cargo build --release (parity)",
    )?;
    let bundle = root.join("target/parity-bundle");
    let _ = std::fs::remove_dir_all(&bundle);
    std::fs::create_dir_all(bundle.join("examples"))
        .map_err(|e| format!("{}: {e}", bundle.display()))?;
    for bin in ["ameide-parity", "parity-adapter-rust"] {
        std::fs::copy(root.join("target/release").join(bin), bundle.join(bin))
            .map_err(|e| format!("{bin}: {e}"))?;
    }
    std::fs::copy(root.join("docs/parity.md"), bundle.join("parity.md"))
        .map_err(|e| format!("parity.md: {e}"))?;
    run(
        Command::new("cp")
            .arg("-r")
            .arg(root.join("parity/cases"))
            .arg(&bundle),
        "copy the cases",
    )?;
    run(
        Command::new("cp")
            .arg("-r")
            .arg(root.join("parity/examples/python"))
            .arg(bundle.join("examples")),
        "copy the Python example",
    )?;
    // The bundle runs by itself: its runner finds the cases beside it.
    run(
        Command::new(bundle.join("ameide-parity"))
            .args(["run", "--run", "defaults-unary-ok"])
            .current_dir(std::env::temp_dir()),
        "the bundle's own run",
    )?;
    println!("parity bundle: {}", bundle.display());
    Ok(())
}

/// Builds the bench harness in release mode and runs its soak.
fn soak(args: &[&str]) -> Result<(), String> {
    let root = workspace_root();
    run(
        cargo()
            .args(["build", "--locked", "--release", "-p", "ameide-bench"])
            .current_dir(&root),
        "cargo build (soak)",
    )?;
    run(
        Command::new(root.join("target/release/ameide-bench"))
            .arg("soak")
            .args(args)
            .current_dir(&root),
        "ameide-bench soak",
    )
}
