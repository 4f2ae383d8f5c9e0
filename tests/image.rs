//! The container image, as far as it can be checked without a container engine (none runs where this
//! repository is developed): the Dockerfile's runtime stage installs packages that provide every shared
//! library the binary links, and it has the shape the manifests rely on.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const DOCKERFILE: &str = include_str!("../Dockerfile");

/// The lines of the last stage (the runtime image), continuation lines joined.
fn runtime_stage() -> Vec<String> {
    let joined = DOCKERFILE.replace("\\\n", " ");
    let stage = joined
        .rsplit_once("\nFROM ")
        .map(|(_, s)| s)
        .expect("a multi-stage Dockerfile");
    stage
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// The packages the runtime stage's `apt-get install` lines name.
fn runtime_packages() -> Vec<String> {
    let mut packages = Vec::new();
    for line in runtime_stage() {
        for command in line.split("&&") {
            let words: Vec<&str> = command.split_whitespace().collect();
            if let Some(at) = words.windows(2).position(|w| w == ["apt-get", "install"]) {
                packages.extend(
                    words[at + 2..]
                        .iter()
                        .filter(|w| !w.starts_with('-'))
                        .map(|w| w.to_string()),
                );
            }
        }
    }
    packages
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The shared libraries `ldd` resolves for `binary`, as absolute paths.
fn linked_libraries(binary: &str) -> Vec<String> {
    run("ldd", &[binary])
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, resolved)) => resolved.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| path.to_owned())
        })
        .collect()
}

/// The paths under which dpkg may have registered `path` (merged /usr: /lib or /usr/lib, symlink or not).
fn candidates(path: &str) -> Vec<String> {
    let canonical = std::fs::canonicalize(path)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| path.to_owned());
    let mut all = Vec::new();
    for p in [path.to_owned(), canonical] {
        let other = match p.strip_prefix("/usr") {
            Some(rest) => rest.to_owned(),
            None => format!("/usr{p}"),
        };
        all.extend([p, other]);
    }
    all
}

/// The Debian package owning each of `paths` (one dpkg call).
fn owners(paths: &[String]) -> Vec<Option<String>> {
    let all: Vec<Vec<String>> = paths.iter().map(|p| candidates(p)).collect();
    let output = Command::new("dpkg")
        .arg("-S")
        .args(all.iter().flatten())
        .output()
        .expect("dpkg runs");
    // `package[:arch]: path` for every path some package owns; the others only complain on stderr.
    let owned: Vec<(String, String)> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| {
            let (package, path) = l.split_once(": ")?;
            Some((
                package.split(':').next()?.to_owned(),
                path.trim().to_owned(),
            ))
        })
        .collect();
    all.iter()
        .map(|names| {
            owned
                .iter()
                .find(|(_, path)| names.contains(path))
                .map(|(package, _)| package.clone())
        })
        .collect()
}

/// `packages` and everything they depend on (what apt installs with them).
fn with_dependencies(packages: &[String]) -> BTreeSet<String> {
    let mut args = vec![
        "depends",
        "--recurse",
        "--no-recommends",
        "--no-suggests",
        "--no-conflicts",
        "--no-breaks",
        "--no-replaces",
        "--no-enhances",
    ];
    args.extend(packages.iter().map(String::as_str));
    run("apt-cache", &args)
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('<'))
        .map(|l| l.trim().to_owned())
        .collect()
}

#[test]
fn the_runtime_stage_provides_every_library_the_binary_links() {
    assert!(
        Path::new("/var/lib/dpkg/status").exists(),
        "this check needs a Debian machine (dpkg, apt-cache)"
    );
    let packages = runtime_packages();
    assert!(
        packages.iter().any(|p| p.starts_with("librocksdb")),
        "the runtime stage installs no RocksDB library: {packages:?}"
    );
    let installed = with_dependencies(&packages);
    let libraries = linked_libraries(env!("CARGO_BIN_EXE_restate"));
    assert!(
        libraries.iter().any(|l| l.contains("librocksdb")),
        "{libraries:?}"
    );
    let missing: Vec<String> = libraries
        .iter()
        .zip(owners(&libraries))
        .filter(|(_, package)| package.as_ref().is_none_or(|p| !installed.contains(p)))
        .map(|(library, package)| format!("{library} ({package:?})"))
        .collect();
    assert!(
        missing.is_empty(),
        "the runtime stage ({packages:?}, with dependencies {installed:?}) lacks {missing:?}"
    );
}

#[test]
fn the_runtime_stage_runs_restate_from_slash_as_a_user_that_owns_target() {
    let stage = runtime_stage().join("\n");
    assert!(
        stage.starts_with("debian:bookworm-slim"),
        "the runtime stage must be the Debian release whose librocksdb the build links: {stage}"
    );
    for needle in [
        "useradd --system --uid 10001",
        "chown restate:restate /target",
        "USER 10001:10001",
        "WORKDIR /\n",
        "EXPOSE 9090 8081 9091",
        "ENTRYPOINT [\"restate\"]",
        "COPY --from=build /src/target/release/restate /usr/local/bin/restate",
    ] {
        assert!(stage.contains(needle), "{needle:?} missing from:\n{stage}");
    }
    // The build stage installs what the build needs.
    let build = DOCKERFILE.split("\nFROM debian").next().unwrap();
    for package in ["librocksdb-dev", "libclang-dev", "build-essential"] {
        assert!(build.contains(package), "the build stage lacks {package}");
    }
}
