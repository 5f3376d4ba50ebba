//! `timewait nginx parse`: a configuration (or an `nginx -T` dump) → the
//! tree, as an indented outline or crossplane's JSON.

use std::fmt::Write as _;
use std::io::Read;

use timewait_host::nginx_files::NginxFiles;
use timewait_nginx::{Config, Directive, crossplane, parse_dump, parse_file};

use crate::Failure;
use crate::cli::NginxParseArgs;
use crate::render::{self, Style};

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

/// `timewait nginx parse`.
pub fn run_parse(a: &NginxParseArgs, st: &Style) -> Result<String, Failure> {
    let parsed = if a.path.as_os_str() == "-" {
        let mut dump = Vec::new();
        std::io::stdin()
            .read_to_end(&mut dump)
            .map_err(|e| Failure::Usage(format!("-: {e}")))?;
        parse_dump(&NginxFiles, &dump)
    } else {
        parse_file(&NginxFiles, &a.path)
    };
    match parsed {
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
