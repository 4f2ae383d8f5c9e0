//! The `restate` server binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use restate::config::{Config, Tracing, ENV_CONFIG_FILE};

/// A thread-per-core durable-execution runtime.
#[derive(Debug, Parser)]
#[command(name = "restate", version, about)]
struct Cli {
    /// TOML config file; every key can be overridden by RESTATE_<SECTION>__<KEY> variables.
    #[arg(short = 'c', long, env = ENV_CONFIG_FILE)]
    config_file: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    dump_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let config = match Config::load(cli.config_file.as_deref(), env.iter().cloned()) {
        Ok(config) => config,
        Err(e) => {
            // Logged in the format the operator asked for, as far as it can be read.
            restate::logging::init(&Tracing::best_effort(cli.config_file.as_deref(), &env));
            log::error!("invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.dump_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    restate::logging::init(&config.tracing);
    abort_on_panic();
    log::info!(cores = config.runtime.cores, partitions = config.worker.partitions; "starting restate");
    match restate::runtime::run(config) {
        Ok(()) => {
            log::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// A panic anywhere (an executor, the storage thread, a helper thread) stops the whole process after it
/// is logged, so that a supervisor restarts it and recovery runs from storage. Unwinding would leave a
/// half-alive process: a dead core whose listeners still accept connections that nobody serves.
fn abort_on_panic() {
    let logged = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        logged(info);
        log::logger().flush();
        std::process::abort();
    }));
}
