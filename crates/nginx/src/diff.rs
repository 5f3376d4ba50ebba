//! `nginx check --diff`: the findings' mechanical fixes as a unified diff
//! (insertions only, no context lines) that `patch -p0` applies from the
//! directory the paths are relative to.

use std::collections::BTreeMap;

use crate::check::Finding;
use crate::parse::Config;

/// The diff of every finding that has an edit; `text(i)` is file `i`'s
/// bytes. Edits at the same place are joined; files in config order.
pub fn unified(
    config: &Config,
    findings: &[Finding],
    text: impl Fn(usize) -> Option<Vec<u8>>,
) -> String {
    // file → after line → (indent line, lines)
    let mut by_file: BTreeMap<usize, BTreeMap<usize, (usize, Vec<String>)>> = BTreeMap::new();
    for e in findings.iter().filter_map(|f| f.edit.as_ref()) {
        let at = by_file
            .entry(e.file)
            .or_default()
            .entry(e.after)
            .or_insert((e.indent_like, vec![]));
        for l in &e.lines {
            if !at.1.contains(l) {
                at.1.push(l.clone());
            }
        }
    }
    let mut out = String::new();
    for (file, edits) in by_file {
        let Some(bytes) = text(file) else { continue };
        let src = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = src.lines().collect();
        let path = config.files[file].path.display();
        out.push_str(&format!("--- {path}\n+++ {path}\n"));
        let mut offset = 0;
        for (after, (indent_like, new)) in edits {
            let indent: String = lines
                .get(indent_like.saturating_sub(1))
                .map(|l| l.chars().take_while(|c| c.is_whitespace()).collect())
                .unwrap_or_default();
            out.push_str(&format!(
                "@@ -{after},0 +{},{} @@\n",
                after + offset + 1,
                new.len()
            ));
            for l in &new {
                out.push_str(&format!("+{indent}{l}\n"));
            }
            offset += new.len();
        }
    }
    out
}
