//! Project chores: `cargo xtask <task>`.
//!
//! | task | what it does |
//! | --- | --- |
//! | `ci` | format check, clippy with warnings as errors, all tests, tidy |
//! | `interop` | the interop matrix against real peers (see `docs/interop.md`) |
//! | `bench` | the criterion benchmarks, then the loopback comparison with Postfix's smtp-sink and smtp-source when installed (see `docs/benchmarks.md`) |
//! | `fuzz` | every fuzz target for a bounded time (needs nightly and cargo-fuzz) |
//! | `tidy` | repository checks that need no build |
//! | `crash-test` | kills `ferry relay` with SIGKILL under load and checks that every acknowledged message is delivered (`--rounds N`, `--clients N`) |

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod crash_test;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let Some(task) = args.first() else {
        eprintln!("usage: cargo xtask <ci|interop|bench|fuzz|tidy|crash-test> [args...]");
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    let result = match task.as_str() {
        "ci" => ci(),
        "interop" => interop(rest),
        "bench" => bench(rest),
        "fuzz" => fuzz(rest),
        "tidy" => tidy(),
        "crash-test" => crash_test(rest),
        other => Err(format!(
            "unknown task `{other}`; try ci, interop, bench, fuzz, tidy or crash-test"
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

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    println!("$ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(root())
        .status()
        .map_err(|error| format!("cannot run {program}: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed with {status}",
            args.join(" ")
        ))
    }
}

fn cargo() -> String {
    env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

fn ci() -> Result<(), String> {
    let cargo = cargo();
    run(&cargo, &["fmt", "--all", "--check"])?;
    run(
        &cargo,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    run(&cargo, &["test", "--workspace"])?;
    tidy()
}

/// Builds ferry and runs the interop matrix script, which starts each peer
/// on loopback and checks what arrived.
fn interop(args: &[String]) -> Result<(), String> {
    let cargo = cargo();
    run(&cargo, &["build", "-p", "ferry"])?;
    let target = env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("target"));
    let ferry = target.join("debug").join("ferry");
    let python = env::var("FERRY_INTEROP_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let mut script_args = vec![
        "interop/matrix.py".to_owned(),
        "--ferry".to_owned(),
        ferry.display().to_string(),
    ];
    script_args.extend(args.iter().cloned());
    let borrowed: Vec<&str> = script_args.iter().map(String::as_str).collect();
    run(&python, &borrowed)
}

fn crash_test(args: &[String]) -> Result<(), String> {
    run(&cargo(), &["build", "-p", "ferry"])?;
    crash_test::run(&crash_test::ferry_binary(&root()), args)
}

/// The criterion benchmarks (arguments go to criterion), then, when
/// Postfix's smtp-sink and smtp-source are installed, the loopback
/// comparison against them (`benches/loopback.py`, every cell).
fn bench(args: &[String]) -> Result<(), String> {
    let cargo = cargo();
    let mut cargo_args = vec!["bench", "-p", "ferry-benches"];
    if !args.is_empty() {
        cargo_args.push("--");
        cargo_args.extend(args.iter().map(String::as_str));
    }
    run(&cargo, &cargo_args)?;
    let peers = ["/usr/sbin/smtp-sink", "/usr/sbin/smtp-source"];
    if let Some(missing) = peers.iter().find(|peer| !Path::new(peer).exists()) {
        println!("{missing} is not installed: skipping the loopback comparison");
        return Ok(());
    }
    run(
        &cargo,
        &["build", "--release", "-p", "ferry", "-p", "ferry-benches"],
    )?;
    let target = env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("target"));
    let ferry = target.join("release").join("ferry").display().to_string();
    run("python3", &["benches/loopback.py", "--ferry", &ferry])
}

/// Runs each fuzz target for `seconds` (default 60).
fn fuzz(args: &[String]) -> Result<(), String> {
    let seconds = args.first().map(String::as_str).unwrap_or("60");
    let targets = std::fs::read_dir(root().join("fuzz/fuzz_targets"))
        .map_err(|error| format!("cannot list fuzz targets: {error}"))?;
    let mut names: Vec<String> = targets
        .filter_map(Result::ok)
        .filter_map(|entry| {
            entry
                .path()
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
        })
        .collect();
    names.sort();
    let max_time = format!("-max_total_time={seconds}");
    for name in names {
        run(
            "cargo",
            &["+nightly", "fuzz", "run", &name, "--", &max_time],
        )?;
    }
    Ok(())
}

/// Checks that need no build: no unfinished-work markers in sources, and
/// every crate carries a README-visible description.
fn tidy() -> Result<(), String> {
    let mut problems = Vec::new();
    for dir in ["crates", "xtask/src", "benches"] {
        visit(&root().join(dir), &mut |path| {
            if path.extension().is_some_and(|ext| ext == "rs") {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                for (number, line) in text.lines().enumerate() {
                    let marker = ["TODO", "FIXME", "XXX", "todo!(", "unimplemented!("] // tidy:allow
                        .iter()
                        .find(|marker| line.contains(*marker) && !line.contains("tidy:allow"));
                    if let Some(marker) = marker {
                        problems.push(format!("{}:{}: `{marker}`", path.display(), number + 1));
                    }
                }
            }
        });
    }
    for required in ["README.md", "ARCHITECTURE.md", ".ci/run"] {
        if !root().join(required).exists() {
            problems.push(format!("{required} is missing"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("tidy found problems:\n{}", problems.join("\n")))
    }
}

fn visit(dir: &Path, found: &mut dyn FnMut(&Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            visit(&path, found);
        } else {
            found(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    /// The tidy checks run with the test suite, so `cargo test` catches
    /// what `cargo xtask tidy` would.
    #[test]
    fn the_repository_is_tidy() {
        super::tidy().unwrap();
    }
}
