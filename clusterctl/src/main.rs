//! The `clusterctl` binary: parses the arguments, runs the command, maps the outcome to an
//! exit status (0 success; 1 failed, refused or unreachable; 2 usage, from clap).

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use clusterctl::cli::Cli;
use clusterctl::{render, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(message) = cli.login() {
        // A usage error, reported (exit status 2) as clap reports its own.
        use clap::CommandFactory;
        Cli::command()
            .error(clap::error::ErrorKind::ArgumentConflict, message)
            .exit();
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("clusterctl: failed to start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    match runtime.block_on(run::run(&cli, &mut stdout)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if cli.json && !err.answer_printed() {
                // Best effort: stdout may be the thing that failed.
                let _ = writeln!(stdout, "{}", render::error_json(&err));
            }
            eprintln!("clusterctl: {err}");
            ExitCode::from(err.exit_status())
        }
    }
}
