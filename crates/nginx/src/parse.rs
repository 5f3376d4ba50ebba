//! The configuration tree: directives with their file and line, blocks,
//! and `include` resolved as nginx resolves it.
//!
//! - A relative include is resolved against the directory of the main
//!   configuration file (nginx's `conf_prefix`), not the including file's.
//! - A pattern with `*`, `?` or `[` is a glob: its matches in sorted order;
//!   no match is fine. A plain path that does not exist is an error.
//! - Each file is parsed once, in the context of its first inclusion, and
//!   files are numbered and parsed in crossplane's order (the main file,
//!   then included files in the order they are first named, breadth
//!   first); nginx would parse a file again at each inclusion. This also
//!   ends include cycles.
//! - `types`, `map`, `geo`, `split_clients` and `charset_map` hold data,
//!   not directives: their lines are kept as directives (key, values) and
//!   the block is marked [`Directive::data`].
//! - `*_by_lua_block` bodies are one argument (the Lua code).
//!
//! Files come from a [`Loader`]; `nginx -T` output (several files in one
//! text) is read by [`parse_dump`].

use std::path::{Path, PathBuf};

use crate::lex::{End, LexError, Lexer, Word};

/// Reads configuration files (the caller's I/O).
pub trait Loader {
    /// A file's bytes.
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>>;
    /// The files matching a glob pattern, sorted; none is not an error.
    fn glob(&self, pattern: &Path) -> std::io::Result<Vec<PathBuf>>;
}

/// A syntax error, as nginx reports it: `file:line: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {message}", file.display())]
pub struct SyntaxError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// nginx's message.
    pub message: String,
}

/// One directive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// Its name (the first word).
    pub name: String,
    /// The other words.
    pub args: Vec<String>,
    /// 1-based line of its name.
    pub line: usize,
    /// The file it is in (an index into [`Config::files`]).
    pub file: usize,
    /// Its block, if it has one.
    pub block: Option<Vec<Directive>>,
    /// For `include`: the indices into [`Config::files`] it brought in.
    pub includes: Vec<usize>,
    /// Whether its block holds data lines (`map`, `types`, …), not directives.
    pub data: bool,
}

/// One parsed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Its path.
    pub path: PathBuf,
    /// Its top-level directives.
    pub directives: Vec<Directive>,
}

/// A whole configuration: the main file first, then every included file
/// in the order of first inclusion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The files.
    pub files: Vec<File>,
}

/// Blocks whose lines are data, not directives (nginx sets `cf->handler`).
pub const DATA_BLOCKS: &[&str] = &["types", "map", "geo", "split_clients", "charset_map"];

/// Data blocks in which `include` still includes (their handlers
/// special-case it; `split_clients` and `charset_map` do not).
const INCLUDE_IN_DATA: &[&str] = &["types", "map", "geo"];

fn text(w: &Word) -> String {
    String::from_utf8_lossy(&w.bytes).into_owned()
}

/// An I/O error as nginx prints it: `(2: No such file or directory)`.
fn os_error(e: &std::io::Error) -> String {
    let text = e.to_string();
    match e.raw_os_error() {
        Some(code) => {
            let suffix = format!(" (os error {code})");
            format!("({code}: {})", text.strip_suffix(&suffix).unwrap_or(&text))
        }
        None => format!("({text})"),
    }
}

fn has_magic(p: &str) -> bool {
    p.contains(['*', '?', '['])
}

struct Parser<'l> {
    loader: &'l dyn Loader,
    /// Where relative includes are resolved.
    prefix: PathBuf,
    files: Vec<File>,
    /// Texts already given (a dump), by path.
    given: Vec<(PathBuf, Vec<u8>)>,
    /// Files named by an include and not parsed yet: their index and the
    /// data block they were included in, if any.
    queue: std::collections::VecDeque<(usize, Option<String>)>,
    /// The file being parsed.
    current: usize,
}

impl Parser<'_> {
    fn source(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        match self.given.iter().find(|(p, _)| p == path) {
            Some((_, t)) => Ok(t.clone()),
            None => self.loader.read(path),
        }
    }

    fn glob(&self, pattern: &Path) -> std::io::Result<Vec<PathBuf>> {
        if self.given.is_empty() {
            return self.loader.glob(pattern);
        }
        // A dump holds every file nginx read: match the pattern against them.
        let pat = pattern.to_string_lossy();
        let mut v: Vec<PathBuf> = self
            .given
            .iter()
            .map(|(p, _)| p.clone())
            .filter(|p| glob_match(pat.as_bytes(), p.to_string_lossy().as_bytes()))
            .collect();
        v.sort();
        Ok(v)
    }

    /// Parses `path` (its bytes `src`) as file number `index`, inside the
    /// data block `data` if it was included in one.
    fn file(
        &mut self,
        index: usize,
        path: &Path,
        src: &[u8],
        data: Option<&str>,
    ) -> Result<(), SyntaxError> {
        let mut lexer = Lexer::new(src);
        self.current = index;
        let directives = self.block(&mut lexer, path, 0, data)?;
        self.files[index].directives = directives;
        Ok(())
    }

    /// Parses the queued files, in order (parsing them queues more).
    fn drain(&mut self, from: &Path) -> Result<(), SyntaxError> {
        while let Some((index, data)) = self.queue.pop_front() {
            let path = self.files[index].path.clone();
            let src = self.source(&path).map_err(|e| SyntaxError {
                file: from.to_path_buf(),
                line: 0,
                message: format!("open() \"{}\" failed {}", path.display(), os_error(&e)),
            })?;
            self.file(index, &path, &src, data.as_deref())?;
        }
        Ok(())
    }

    /// Directives until `}` (`depth` > 0) or the end (`depth` 0). `data`:
    /// the enclosing data block's name.
    fn block(
        &mut self,
        lexer: &mut Lexer,
        path: &Path,
        depth: usize,
        data: Option<&str>,
    ) -> Result<Vec<Directive>, SyntaxError> {
        let at = |e: LexError| SyntaxError {
            file: path.to_path_buf(),
            line: e.line,
            message: e.message,
        };
        let mut out = Vec::new();
        let mut words = Vec::new();
        loop {
            let end = lexer.next(&mut words).map_err(at)?;
            match end {
                End::Eof if depth > 0 => {
                    return Err(at(LexError {
                        line: lexer.line(),
                        message: "unexpected end of file, expecting \"}\"".into(),
                    }));
                }
                End::Eof => return Ok(out),
                End::BlockEnd if depth == 0 => {
                    return Err(at(LexError {
                        line: lexer.line(),
                        message: "unexpected \"}\"".into(),
                    }));
                }
                End::BlockEnd => return Ok(out),
                End::Semicolon | End::BlockStart => {}
            }
            let name = text(&words[0]);
            let line = words[0].line;
            let mut args: Vec<String> = words[1..].iter().map(text).collect();
            let mut d = Directive {
                name,
                args: Vec::new(),
                line,
                file: self.current,
                block: None,
                includes: Vec::new(),
                data: false,
            };
            if end == End::BlockStart {
                if data.is_some() {
                    return Err(at(LexError {
                        line: lexer.line(),
                        message: "unexpected \"{\"".into(),
                    }));
                }
                if d.name.ends_with("_by_lua_block") {
                    let body = lexer.lua_block().map_err(at)?;
                    args.push(String::from_utf8_lossy(&body).into_owned());
                    d.block = None;
                } else {
                    let inner = DATA_BLOCKS
                        .contains(&d.name.as_str())
                        .then_some(d.name.as_str());
                    d.data = inner.is_some();
                    let inner = inner.map(str::to_string);
                    d.block = Some(self.block(lexer, path, depth + 1, inner.as_deref())?);
                }
            } else if d.name == "include"
                && !words[0].quoted
                && data.is_none_or(|b| INCLUDE_IN_DATA.contains(&b))
            {
                if args.len() != 1 {
                    return Err(at(LexError {
                        line,
                        message: "invalid number of arguments in \"include\" directive".into(),
                    }));
                }
                d.includes = self.include(&args[0], path, line, data)?;
            }
            d.args = args;
            out.push(d);
        }
    }

    /// The files an `include` brings in (parsing the new ones).
    fn include(
        &mut self,
        arg: &str,
        from: &Path,
        line: usize,
        data: Option<&str>,
    ) -> Result<Vec<usize>, SyntaxError> {
        let fail = |message: String| SyntaxError {
            file: from.to_path_buf(),
            line,
            message,
        };
        let pattern = self.prefix.join(arg);
        let paths = if has_magic(arg) {
            self.glob(&pattern)
                .map_err(|e| fail(format!("glob \"{}\" failed: {e}", pattern.display())))?
        } else {
            vec![pattern]
        };
        let mut indices = Vec::new();
        for p in paths {
            if let Some(i) = self.files.iter().position(|f| f.path == p) {
                indices.push(i);
                continue;
            }
            // A file that cannot be read is the including line's error.
            if !has_magic(arg) {
                self.source(&p).map_err(|e| {
                    fail(format!(
                        "open() \"{}\" failed {}",
                        p.display(),
                        os_error(&e)
                    ))
                })?;
            }
            let index = self.files.len();
            self.files.push(File {
                path: p.clone(),
                directives: Vec::new(),
            });
            self.queue.push_back((index, data.map(str::to_string)));
            indices.push(index);
        }
        Ok(indices)
    }
}

/// Parses the configuration whose main file is `path`.
pub fn parse_file(loader: &dyn Loader, path: &Path) -> Result<Config, SyntaxError> {
    let src = loader.read(path).map_err(|e| SyntaxError {
        file: path.to_path_buf(),
        line: 0,
        message: format!("cannot read: {e}"),
    })?;
    parse_with(loader, path, &src, Vec::new())
}

fn parse_with(
    loader: &dyn Loader,
    path: &Path,
    src: &[u8],
    given: Vec<(PathBuf, Vec<u8>)>,
) -> Result<Config, SyntaxError> {
    let mut p = Parser {
        loader,
        prefix: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        files: vec![File {
            path: path.to_path_buf(),
            directives: Vec::new(),
        }],
        given,
        queue: std::collections::VecDeque::new(),
        current: 0,
    };
    p.file(0, path, src, None)?;
    p.drain(path)?;
    Ok(Config { files: p.files })
}

/// The line `nginx -T` prints before each file.
const DUMP_MARK: &[u8] = b"# configuration file ";

/// Parses `nginx -T` output: each `# configuration file PATH:` line starts
/// a file; the first is the main one, includes are matched against the
/// dumped files (as the files nginx really read).
pub fn parse_dump(loader: &dyn Loader, dump: &[u8]) -> Result<Config, SyntaxError> {
    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    for line in dump.split_inclusive(|&b| b == b'\n') {
        if let Some(rest) = line.strip_prefix(DUMP_MARK) {
            let name = String::from_utf8_lossy(rest);
            let name = name.trim_end().trim_end_matches(':');
            files.push((PathBuf::from(name), Vec::new()));
        } else if let Some((_, text)) = files.last_mut() {
            text.extend_from_slice(line);
        }
    }
    let Some((main, src)) = files.first().cloned() else {
        return Err(SyntaxError {
            file: PathBuf::from("-"),
            line: 1,
            message: "not an `nginx -T` dump (no \"# configuration file\" line)".into(),
        });
    };
    parse_with(loader, &main, &src, files)
}

/// `fnmatch`-style matching as glob(3) applies it to a whole path: `*` and `?`
/// do not match `/` nor a leading `.` of a name, `[...]` a class.
pub fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let (mut star_p, mut star_i) = (usize::MAX, 0);
    let name_start = |i: usize| i == 0 || s[i - 1] == b'/';
    while i < s.len() {
        let matched = match pat.get(p) {
            Some(b'*') if s[i] != b'/' && !(s[i] == b'.' && name_start(i)) => {
                star_p = p;
                star_i = i;
                p += 1;
                continue;
            }
            Some(b'?') => s[i] != b'/' && !(s[i] == b'.' && name_start(i)),
            Some(b'[') => match class(&pat[p..], s[i]) {
                Some((ok, len)) => {
                    if ok {
                        p += len - 1;
                    }
                    ok
                }
                None => s[i] == b'[',
            },
            Some(&c) => c == s[i],
            None => false,
        };
        if matched {
            p += 1;
            i += 1;
        } else if star_p != usize::MAX && s[star_i] != b'/' {
            p = star_p + 1;
            star_i += 1;
            i = star_i;
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// `[...]` at the start of `pat` against `c`: (matches, length of the class).
fn class(pat: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(pat.get(1), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut ok = false;
    let mut first = true;
    while let Some(&x) = pat.get(i) {
        if x == b']' && !first {
            return Some((ok != negate, i + 1));
        }
        if pat.get(i + 1) == Some(&b'-') && pat.get(i + 2).is_some_and(|&y| y != b']') {
            ok |= (x..=pat[i + 2]).contains(&c);
            i += 3;
        } else {
            ok |= x == c;
            i += 1;
        }
        first = false;
    }
    None
}

#[cfg(test)]
mod tests;
