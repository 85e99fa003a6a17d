//! `jobclient`: submit, inspect and cancel jobs from the command line.
//! Everything but start-up lives in `lts_jobclient::cli`.

use std::process::ExitCode;

use lts_common::runtime::{init_tracing, LogFormat};
use lts_jobclient::cli::{self, Cli, EXIT_TRACKER};

fn main() -> ExitCode {
    let cli: Cli = lts_common::config::parse_with_file();
    init_tracing(LogFormat::Human);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("jobclient: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_TRACKER);
        }
    };
    ExitCode::from(runtime.block_on(cli::run(cli)))
}
