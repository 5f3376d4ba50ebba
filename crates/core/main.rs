//! `timewait`: parse flags, call the libraries, render, and choose the exit
//! status. Nothing else lives here.
//!
//! Exit status: 0 success; 1 runtime failure; 2 bad usage or bad input, with a one-line error naming the flag;
//! doctor adds 1 = worst finding is a warning, 3 = critical.

mod cli;
mod doctor_cmd;
mod exporter_cmd;
mod lab_cmd;
mod load_cmd;
mod model_cmd;
mod nginx_cmd;
mod proxy_cmd;
mod render;
mod status_cmd;
mod trace_cmd;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, ModelCommand, NginxCommand};
use render::Style;

/// Why a command did not succeed, and so which exit status it gets.
#[derive(Debug)]
pub enum Failure {
    /// Bad flag values or input: exit 2.
    Usage(String),
    /// Anything else at run time: exit 1.
    Runtime(anyhow::Error),
}

/// What a successful command prints, and its exit status (doctor's says
/// the worst finding).
pub struct Done {
    text: String,
    code: u8,
}

impl From<String> for Done {
    fn from(text: String) -> Done {
        Done { text, code: 0 }
    }
}

impl From<timewait_model::ModelError> for Failure {
    fn from(e: timewait_model::ModelError) -> Failure {
        match e.parameter() {
            Some(p) => Failure::Usage(format!("--{p}: {e}")),
            None => Failure::Usage(e.to_string()),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::Runtime(e)
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version: stdout, success (a closed pipe is fine too).
            let _ = render::emit(&e.render().to_string());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            use clap::error::ErrorKind;
            let text = e.render().to_string();
            // A bad value is one line naming the flag; a missing argument
            // or subcommand also shows the usage line.
            let brief = matches!(
                e.kind(),
                ErrorKind::InvalidValue | ErrorKind::ValueValidation | ErrorKind::ArgumentConflict
            );
            let shown = if brief {
                text.lines().next().unwrap_or_default()
            } else {
                text.trim_end()
            };
            eprintln!("timewait: {}", shown.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    let style = Style::detect(cli.color);
    let result = dispatch(&cli.command, &style);
    match result {
        Ok(done) => match render::emit(&done.text) {
            Ok(()) => ExitCode::from(done.code),
            Err(e) => {
                eprintln!("timewait: cannot write output: {e}");
                ExitCode::from(1)
            }
        },
        Err(Failure::Usage(msg)) => {
            eprintln!("timewait: error: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("timewait: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn dispatch(command: &Command, style: &Style) -> Result<Done, Failure> {
    match command {
        Command::Model(ModelCommand::Rate(a)) => model_cmd::run_rate(a, style).map(Done::from),
        Command::Model(ModelCommand::Wrap(a)) => model_cmd::run_wrap(a, style).map(Done::from),
        Command::Model(ModelCommand::Simulate(a)) => {
            model_cmd::run_simulate(a, style).map(Done::from)
        }
        Command::Status(a) => status_cmd::run_status(a, style).map(Done::from),
        Command::Snapshot(a) => status_cmd::run_snapshot(a).map(Done::from),
        Command::Doctor(a) => doctor_cmd::run_doctor(a, style),
        Command::Tune(a) => doctor_cmd::run_tune(a, style).map(Done::from),
        Command::Proxy(a) => proxy_cmd::run_proxy(a).map(Done::from),
        Command::Load(a) => load_cmd::run_load(a, style).map(Done::from),
        Command::Lab(a) => lab_cmd::run_lab(a, style).map(Done::from),
        Command::Nginx(NginxCommand::Check(a)) => nginx_cmd::run_check(a, style),
        Command::Nginx(NginxCommand::Parse(a)) => nginx_cmd::run_parse(a, style).map(Done::from),
        Command::Exporter(a) => exporter_cmd::run_exporter(a).map(Done::from),
        Command::Trace(a) => trace_cmd::run_trace(a, style).map(Done::from),
    }
}
