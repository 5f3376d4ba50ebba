//! `timewait nginx parse`: a configuration (or an `nginx -T` dump) → the
//! tree, as an indented outline or crossplane's JSON.

use std::fmt::Write as _;
use std::io::Read;

use timewait_host::nginx_files::{NginxFiles, installed_version};
use timewait_nginx::check::{Finding, Severity, Version, check};
use timewait_nginx::{Config, Directive, crossplane, parse_dump, parse_file};

use crate::cli::{NginxCheckArgs, NginxFormat, NginxParseArgs};
use crate::render::{self, Style};
use crate::{Done, Failure};

fn outline(o: &mut String, ds: &[Directive], depth: usize) {
    for d in ds {
        let args: Vec<String> = d
            .args
            .iter()
            .map(|a| {
                if a.is_empty() || a.contains([' ', ';', '{', '}', '#', '"', '\'']) {
                    format!("{a:?}")
                } else {
                    a.clone()
                }
            })
            .collect();
        let _ = write!(o, "{:w$}{:>5}  {}", "", d.line, d.name, w = depth * 2);
        if !args.is_empty() {
            let _ = write!(o, " {}", args.join(" "));
        }
        if !d.includes.is_empty() {
            let _ = write!(o, "   → files {:?}", d.includes);
        }
        let _ = writeln!(o, "{}", if d.block.is_some() { " {" } else { ";" });
        if let Some(b) = &d.block {
            outline(o, b, depth + 1);
        }
    }
}

fn human(c: &Config, st: &Style) -> String {
    let mut o = String::new();
    for (i, f) in c.files.iter().enumerate() {
        st.heading(&mut o, &format!("[{i}] {}", f.path.display()));
        outline(&mut o, &f.directives, 1);
    }
    o
}

/// Parses PATH, or an `nginx -T` dump from standard input for `-`.
fn load(path: &std::path::Path) -> Result<Result<Config, timewait_nginx::SyntaxError>, Failure> {
    Ok(if path.as_os_str() == "-" {
        let mut dump = Vec::new();
        std::io::stdin()
            .read_to_end(&mut dump)
            .map_err(|e| Failure::Usage(format!("-: {e}")))?;
        parse_dump(&NginxFiles, &dump)
    } else {
        parse_file(&NginxFiles, path)
    })
}

/// `timewait nginx parse`.
pub fn run_parse(a: &NginxParseArgs, st: &Style) -> Result<String, Failure> {
    match load(&a.path)? {
        Ok(c) if a.json => Ok(render::json(&crossplane::ok(&c))?),
        Ok(c) => Ok(human(&c, st)),
        Err(e) if e.line == 0 => Err(Failure::Usage(format!(
            "{}: {}",
            e.file.display(),
            e.message
        ))),
        Err(e) => {
            if a.json {
                // The document for tools, and the one-line error for people.
                render::emit(&render::json(&crossplane::failed(&e))?)
                    .map_err(|e| Failure::Runtime(e.into()))?;
            }
            Err(Failure::Usage(e.to_string()))
        }
    }
}

/// The JSON document of `nginx check`.
#[derive(serde::Serialize)]
struct CheckReport<'a> {
    nginx_version: Option<String>,
    /// `flag`, `installed` or `none` (the older defaults apply).
    version_source: &'static str,
    worst_severity: Option<Severity>,
    findings: &'a [Finding],
}

fn github(findings: &[Finding]) -> String {
    // Workflow commands: newlines and % are escaped in the message.
    let esc = |s: &str| {
        s.replace('%', "%25")
            .replace('\r', "%0D")
            .replace('\n', "%0A")
    };
    let mut o = String::new();
    for f in findings {
        let level = match f.severity {
            Severity::Warning => "warning",
            Severity::Info => "notice",
        };
        let _ = writeln!(
            o,
            "::{level} file={},line={},title={}::{}",
            f.file,
            f.line,
            f.code,
            esc(&format!("{}\n{}\nFix:\n{}", f.title, f.evidence, f.fix))
        );
    }
    o
}

fn human_check(findings: &[Finding], version: &str, st: &Style) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{}", st.dim(&format!("defaults of {version}")));
    if findings.is_empty() {
        let _ = writeln!(
            o,
            "{}",
            st.green("No keep-alive or header-inheritance pitfalls found.")
        );
        return o;
    }
    let mut files: Vec<&str> = findings.iter().map(|f| f.file.as_str()).collect();
    files.dedup();
    files.sort();
    files.dedup();
    for file in files {
        let _ = writeln!(o);
        st.heading(&mut o, file);
        for f in findings.iter().filter(|f| f.file == file) {
            let sev = match f.severity {
                Severity::Warning => st.bold("warning"),
                Severity::Info => st.dim("info"),
            };
            let _ = writeln!(o, "{file}:{}: {sev}[{}]: {}", f.line, f.code, f.title);
            for l in f.evidence.lines() {
                let _ = writeln!(o, "    {l}");
            }
            let _ = writeln!(o, "  {}", st.bold("fix:"));
            for l in f.fix.lines() {
                let _ = writeln!(o, "    {l}");
            }
        }
    }
    o
}

/// `timewait nginx check`: exit 0 nothing above info, 1 warnings, 2 a
/// syntax error.
pub fn run_check(a: &NginxCheckArgs, st: &Style) -> Result<Done, Failure> {
    let (version, source) = match &a.nginx_version {
        Some(v) => (
            Some(Version::parse(v).ok_or_else(|| {
                Failure::Usage(format!("--nginx-version {v}: expected X.Y.Z, e.g. 1.29.7"))
            })?),
            "flag",
        ),
        None => match installed_version().and_then(|v| Version::parse(&v)) {
            Some(v) => (Some(v), "installed"),
            None => (None, "none"),
        },
    };
    let config = load(&a.path)?.map_err(|e| Failure::Usage(e.to_string()))?;
    let findings = check(&config, version);
    let worst = findings.iter().map(|f| f.severity).max();
    let text = if a.diff {
        timewait_nginx::diff::unified(&config, &findings, |i| {
            std::fs::read(&config.files[i].path).ok()
        })
    } else if a.json {
        render::json(&CheckReport {
            nginx_version: version.map(|v| v.to_string()),
            version_source: source,
            worst_severity: worst,
            findings: &findings,
        })?
    } else if a.format == NginxFormat::Github {
        github(&findings)
    } else {
        let shown = match (version, source) {
            (Some(v), "installed") => format!("nginx {v} (the installed nginx -v)"),
            (Some(v), _) => format!("nginx {v}"),
            _ => "nginx before 1.29.7 (no --nginx-version, no nginx installed)".into(),
        };
        human_check(&findings, &shown, st)
    };
    Ok(Done {
        text,
        code: match worst {
            Some(Severity::Warning) => 1,
            _ => 0,
        },
    })
}
