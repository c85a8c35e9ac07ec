//! The `ferry` command line: see `ferry --help`.

use std::process::ExitCode;

use clap::Parser;
use ferry::cli::{Cli, Command};

fn main() -> ExitCode {
    // clap prints usage errors and exits with 2 by itself.
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, never into a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // `ferry serve` runs one single-threaded runtime per serving thread
    // (this one is the first, see `ferry::serve::run`): a session never
    // waits for another thread to be woken. The other commands share one
    // multi-threaded runtime.
    let runtime = match cli.command {
        Command::Serve(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("ferry: cannot start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let code = match cli.command {
        Command::Serve(args) => match runtime.block_on(ferry::serve::run(args)) {
            Ok(()) => 0,
            Err(message) => {
                eprintln!("ferry serve: {message}");
                1
            }
        },
        Command::Relay(args) => match runtime.block_on(ferry::relay::run(*args)) {
            Ok(()) => 0,
            Err(message) => {
                eprintln!("ferry relay: {message}");
                1
            }
        },
        Command::Queue(args) => i32::from(runtime.block_on(ferry::queue::run(args))),
        Command::Send(args) => runtime.block_on(ferry::client_run::run_send(args)),
        Command::Bench(args) => runtime.block_on(ferry::client_run::run_bench(args)),
        Command::Check(args) => runtime.block_on(ferry::check::run(*args)),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
