//! Human output: aligned tables, thousands separators, colour only when asked
//! for (a terminal without NO_COLOR, or `--color always`). JSON goes through
//! serde and nothing else is printed with it.

use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};

use crate::cli::ColorChoice;

/// Whether to emit ANSI colour.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    color: bool,
}

impl Style {
    /// Decides from `--color`, the terminal and `NO_COLOR` (<https://no-color.org>).
    pub fn detect(choice: ColorChoice) -> Style {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let color = match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => !no_color && io::stdout().is_terminal(),
        };
        Style { color }
    }

    #[cfg(test)]
    pub fn plain() -> Style {
        Style { color: false }
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    /// Headings.
    pub fn bold(&self, s: &str) -> String {
        self.paint("1", s)
    }

    /// A section title: its own line, in bold.
    pub fn heading(&self, o: &mut String, title: &str) {
        o.push_str(&self.bold(title));
        o.push('\n');
    }

    /// Secondary text.
    pub fn dim(&self, s: &str) -> String {
        self.paint("2", s)
    }

    /// Bad news.
    pub fn red(&self, s: &str) -> String {
        self.paint("31", s)
    }

    /// Good news.
    pub fn green(&self, s: &str) -> String {
        self.paint("32", s)
    }
}

/// `28232` → `28,232`.
pub fn int(n: u64) -> String {
    timewait_model::text::thousands(n)
}

/// `ESTABLISHED 10, LISTEN 4, TIME_WAIT 71` (or `none`).
pub fn state_list(states: &std::collections::BTreeMap<String, u64>) -> String {
    if states.is_empty() {
        return "none".into();
    }
    let parts: Vec<String> = states
        .iter()
        .map(|(k, v)| format!("{k} {}", int(*v)))
        .collect();
    parts.join(", ")
}

/// A rate or other real number: one decimal below 10,000, whole above,
/// always with thousands separators (`470.5`, `1,075.2`, `28,232`).
pub fn real(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    let neg = x < 0.0;
    let x = x.abs();
    let s = if x >= 10_000.0 {
        int(x.round() as u64)
    } else {
        let tenths = (x * 10.0).round() as u64;
        if tenths.is_multiple_of(10) {
            int(tenths / 10)
        } else {
            format!("{}.{}", int(tenths / 10), tenths % 10)
        }
    };
    if neg { format!("-{s}") } else { s }
}

/// Milliseconds: as [`real`], but two significant digits below 1 ms, so
/// that a loopback handshake of 9 µs reads `0.009`, not `0`.
pub fn millis(x: f64) -> String {
    if !(x > 0.0 && x < 1.0) {
        return real(x);
    }
    let decimals = (1.0 - x.log10().floor()).min(6.0) as usize;
    let s = format!("{x:.decimals$}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Bits per second with an SI prefix: `25 Gbit/s`, `1.5 Mbit/s`.
pub fn bits(bps: f64) -> String {
    let (div, unit) = match bps {
        b if b >= 1e12 => (1e12, "Tbit/s"),
        b if b >= 1e9 => (1e9, "Gbit/s"),
        b if b >= 1e6 => (1e6, "Mbit/s"),
        b if b >= 1e3 => (1e3, "kbit/s"),
        _ => (1.0, "bit/s"),
    };
    format!("{} {unit}", real(bps / div))
}

/// Seconds in the unit a person would use: `172 ms`, `17.2 s`, `28.6 min`, `3.2 h`, `3.6 days`.
pub fn duration(secs: f64) -> String {
    if secs < 1.0 {
        format!("{} ms", real(secs * 1000.0))
    } else if secs < 120.0 {
        format!("{} s", real(secs))
    } else if secs < 2.0 * 3600.0 {
        format!("{} min", real(secs / 60.0))
    } else if secs < 2.0 * 86_400.0 {
        format!("{} h", real(secs / 3600.0))
    } else {
        format!("{} days", real(secs / 86_400.0))
    }
}

/// Column alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// A table with a header row, columns padded to their widest cell.
pub struct Table {
    headers: Vec<String>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns.
    pub fn new(columns: &[(&str, Align)]) -> Table {
        Table {
            headers: columns.iter().map(|c| c.0.to_string()).collect(),
            align: columns.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Renders with two spaces between columns, `indent` before each line.
    pub fn render(&self, style: &Style, indent: &str) -> String {
        let cols = self.headers.len();
        let width = |s: &str| strip_ansi(s).chars().count();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(cols) {
                widths[i] = widths[i].max(width(c));
            }
        }
        let mut out = String::new();
        let line = |cells: &[String], out: &mut String, header: bool| {
            let mut l = String::from(indent);
            for (i, w) in widths.iter().enumerate() {
                let c = cells.get(i).map(String::as_str).unwrap_or("");
                let pad = w - width(c);
                let cell = if header { style.bold(c) } else { c.to_string() };
                match self.align[i] {
                    Align::Left => {
                        l.push_str(&cell);
                        if i + 1 < cols {
                            l.push_str(&" ".repeat(pad));
                        }
                    }
                    Align::Right => {
                        l.push_str(&" ".repeat(pad));
                        l.push_str(&cell);
                    }
                }
                if i + 1 < cols {
                    l.push_str("  ");
                }
            }
            let _ = writeln!(out, "{}", l.trim_end());
        };
        line(&self.headers, &mut out, true);
        for r in &self.rows {
            line(r, &mut out, false);
        }
        out
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_escape = false;
    for c in s.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes `text` to stdout. A closed pipe (`timewait … | head`) is not an
/// error; it is remembered so a refreshing view can stop.
pub fn emit(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
            STDOUT_CLOSED.store(true, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
        other => other,
    }
}

/// Whether a write found stdout closed.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Pretty JSON with a trailing newline.
pub fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<String> {
    let mut s = serde_json::to_string_pretty(value)?;
    s.push('\n');
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_like_a_person_writes_them() {
        assert_eq!(int(0), "0");
        assert_eq!(int(999), "999");
        assert_eq!(int(28_232), "28,232");
        assert_eq!(int(1_234_567), "1,234,567");
        assert_eq!(real(470.5333), "470.5");
        assert_eq!(real(1075.2), "1,075.2");
        assert_eq!(real(6451.2), "6,451.2");
        assert_eq!(real(28_232.0), "28,232");
        assert_eq!(real(0.04), "0");
        assert_eq!(real(7000.0), "7,000");
        assert_eq!(millis(0.009), "0.009");
        assert_eq!(millis(0.001), "0.001");
        assert_eq!(millis(0.14), "0.14");
        assert_eq!(millis(0.5), "0.5");
        assert_eq!(millis(0.999), "1");
        assert_eq!(millis(4.34), "4.3");
        assert_eq!(millis(0.0), "0");
        assert_eq!(bits(25e9), "25 Gbit/s");
        assert_eq!(bits(1.5e6), "1.5 Mbit/s");
        assert_eq!(duration(0.1718), "171.8 ms");
        assert_eq!(duration(17.18), "17.2 s");
        assert_eq!(duration(1718.0), "28.6 min");
        assert_eq!(duration(11_453.0), "3.2 h");
        assert_eq!(duration(306_783.0), "3.6 days");
    }

    #[test]
    fn tables_align_and_ignore_colour_codes() {
        let mut t = Table::new(&[("name", Align::Left), ("n", Align::Right)]);
        t.row(vec!["a".into(), "1,000".into()]);
        t.row(vec!["longer".into(), "\x1b[31m5\x1b[0m".into()]);
        let s = t.render(&Style::plain(), "  ");
        assert_eq!(
            s,
            "  name        n\n  a       1,000\n  longer      \x1b[31m5\x1b[0m\n"
        );
    }
}
