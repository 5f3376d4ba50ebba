//! The tree in crossplane's JSON shape (`crossplane parse`):
//! `{status, errors, config: [{file, status, errors, parsed: [{directive,
//! line, args, includes?, block?}]}]}`, so tools that read crossplane's
//! output read ours.

use serde::Serialize;

use crate::parse::{Config, Directive, SyntaxError};

/// The whole document.
#[derive(Debug, Serialize)]
pub struct Payload {
    /// `ok` or `failed`.
    pub status: &'static str,
    /// Errors (a syntax error stops the parse: at most one).
    pub errors: Vec<Error>,
    /// One entry per file.
    pub config: Vec<FileOut>,
}

/// An error.
#[derive(Debug, Serialize)]
pub struct Error {
    /// The file.
    pub file: String,
    /// Its line.
    pub line: usize,
    /// The message.
    pub error: String,
}

/// One file.
#[derive(Debug, Serialize)]
pub struct FileOut {
    /// Its path.
    pub file: String,
    /// `ok`.
    pub status: &'static str,
    /// Always empty (errors are document-level).
    pub errors: Vec<Error>,
    /// Its directives.
    pub parsed: Vec<DirectiveOut>,
}

/// One directive.
#[derive(Debug, Serialize)]
pub struct DirectiveOut {
    /// Its name.
    pub directive: String,
    /// Its line.
    pub line: usize,
    /// Its arguments.
    pub args: Vec<String>,
    /// For `include`: indices into `config`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub includes: Option<Vec<usize>>,
    /// Its block.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block: Option<Vec<DirectiveOut>>,
}

fn directive(d: &Directive) -> DirectiveOut {
    DirectiveOut {
        directive: d.name.clone(),
        line: d.line,
        args: d.args.clone(),
        includes: (d.name == "include" && d.block.is_none()).then(|| d.includes.clone()),
        block: d.block.as_ref().map(|b| b.iter().map(directive).collect()),
    }
}

/// A parsed configuration.
pub fn ok(c: &Config) -> Payload {
    Payload {
        status: "ok",
        errors: vec![],
        config: c
            .files
            .iter()
            .map(|f| FileOut {
                file: f.path.display().to_string(),
                status: "ok",
                errors: vec![],
                parsed: f.directives.iter().map(directive).collect(),
            })
            .collect(),
    }
}

/// A configuration that did not parse.
pub fn failed(e: &SyntaxError) -> Payload {
    Payload {
        status: "failed",
        errors: vec![Error {
            file: e.file.display().to_string(),
            line: e.line,
            error: e.message.clone(),
        }],
        config: vec![],
    }
}
