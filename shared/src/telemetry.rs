//! Tracing set-up: logs go to stderr (stdout is a command's output), pretty on a terminal, JSON
//! lines otherwise; `RUST_LOG` filters.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// `LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Installs the global subscriber once, writing to stderr. `format` defaults to pretty when stderr
/// is a TTY, JSON otherwise;
/// `default_level` applies when `RUST_LOG` is unset.
pub fn init_tracing(default_level: &str, format: Option<LogFormat>) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let format = format.unwrap_or(if std::io::stderr().is_terminal() {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Err(error) = installed {
        eprintln!("tracing was already initialised: {error}");
    }
}
