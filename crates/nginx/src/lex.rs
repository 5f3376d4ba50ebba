//! nginx's tokenizer, ported from `ngx_conf_read_token()` (nginx
//! src/core/ngx_conf_file.c, unchanged in substance since 1.24): the same
//! states (`need_space`, `last_space`, `sharp_comment`, `variable`,
//! `quoted`, `s_quoted`, `d_quoted`), the same escape decoding when a word
//! is copied out, the same error messages. Byte-oriented: a configuration
//! need not be UTF-8. Lines are counted on LF.
//!
//! A `*_by_lua_block` body is not nginx syntax: after its `{` the parser
//! calls [`Lexer::lua_block`], a port of lua-nginx-module's block lexer
//! (`ngx_http_lua_conf_read_lua_token`), which skips Lua strings, long
//! brackets and comments while it counts braces.

/// One word of a directive: its bytes (quotes removed, escapes decoded)
/// and the line it started on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// 1-based line where the word starts.
    pub line: usize,
    /// Whether it was quoted (a quoted `include` or `}` is just a word).
    pub quoted: bool,
}

/// What ended a run of words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// `;`: a simple directive.
    Semicolon,
    /// `{`: a block directive.
    BlockStart,
    /// `}` with no words before it.
    BlockEnd,
    /// The end of the text, with no words pending.
    Eof,
}

/// A syntax error: the line nginx would name and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LexError {
    /// 1-based line.
    pub line: usize,
    /// nginx's message, e.g. `unexpected "}"`.
    pub message: String,
}

/// The longest word nginx accepts (`NGX_CONF_BUFFER`).
const MAX_WORD: usize = 4096;

fn space(ch: u8) -> bool {
    matches!(ch, b' ' | b'\t' | b'\r' | b'\n')
}

/// A printable form of a byte for messages (`"x"`).
fn shown(ch: u8) -> String {
    if ch.is_ascii_graphic() {
        (ch as char).to_string()
    } else {
        format!("\\x{ch:02x}")
    }
}

/// The tokenizer over one file's bytes.
pub struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
    line: usize,
}

impl<'a> Lexer<'a> {
    /// A lexer at the start of `src`.
    pub fn new(src: &'a [u8]) -> Lexer<'a> {
        Lexer {
            src,
            pos: 0,
            line: 1,
        }
    }

    /// The current line.
    pub fn line(&self) -> usize {
        self.line
    }

    fn err(&self, message: impl Into<String>) -> LexError {
        LexError {
            line: self.line,
            message: message.into(),
        }
    }

    /// The words of the next directive (or nothing, before `}` or the
    /// end), and what ended them.
    pub fn next(&mut self, words: &mut Vec<Word>) -> Result<End, LexError> {
        words.clear();
        let (mut need_space, mut last_space, mut sharp_comment) = (false, true, false);
        let (mut variable, mut quoted, mut s_quoted, mut d_quoted) = (false, false, false, false);
        let (mut start, mut start_line, mut was_quoted) = (0usize, self.line, false);
        loop {
            let Some(&ch) = self.src.get(self.pos) else {
                if !words.is_empty() || !last_space {
                    return Err(self.err("unexpected end of file, expecting \";\" or \"}\""));
                }
                return Ok(End::Eof);
            };
            self.pos += 1;
            if ch == b'\n' {
                self.line += 1;
                if sharp_comment {
                    sharp_comment = false;
                }
            }
            if sharp_comment {
                continue;
            }
            if quoted {
                quoted = false;
                continue;
            }
            if need_space {
                if space(ch) {
                    last_space = true;
                    need_space = false;
                    continue;
                }
                match ch {
                    b';' => return Ok(End::Semicolon),
                    b'{' => return Ok(End::BlockStart),
                    b')' => {
                        last_space = true;
                        need_space = false;
                    }
                    _ => return Err(self.err(format!("unexpected \"{}\"", shown(ch)))),
                }
            }
            if last_space {
                start = self.pos - 1;
                start_line = self.line;
                was_quoted = false;
                if space(ch) {
                    continue;
                }
                match ch {
                    b';' | b'{' => {
                        if words.is_empty() {
                            return Err(self.err(format!("unexpected \"{}\"", ch as char)));
                        }
                        return Ok(if ch == b'{' {
                            End::BlockStart
                        } else {
                            End::Semicolon
                        });
                    }
                    b'}' => {
                        if !words.is_empty() {
                            return Err(self.err("unexpected \"}\""));
                        }
                        return Ok(End::BlockEnd);
                    }
                    b'#' => {
                        sharp_comment = true;
                        continue;
                    }
                    b'\\' => {
                        quoted = true;
                        last_space = false;
                        continue;
                    }
                    b'"' => {
                        start += 1;
                        d_quoted = true;
                        was_quoted = true;
                        last_space = false;
                        continue;
                    }
                    b'\'' => {
                        start += 1;
                        s_quoted = true;
                        was_quoted = true;
                        last_space = false;
                        continue;
                    }
                    b'$' => {
                        variable = true;
                        last_space = false;
                        continue;
                    }
                    _ => last_space = false,
                }
            } else {
                if ch == b'{' && variable {
                    continue;
                }
                variable = false;
                if ch == b'\\' {
                    quoted = true;
                    continue;
                }
                if ch == b'$' {
                    variable = true;
                    continue;
                }
                let mut found = false;
                if d_quoted {
                    if ch == b'"' {
                        d_quoted = false;
                        need_space = true;
                        found = true;
                    }
                } else if s_quoted {
                    if ch == b'\'' {
                        s_quoted = false;
                        need_space = true;
                        found = true;
                    }
                } else if space(ch) || ch == b';' || ch == b'{' {
                    last_space = true;
                    found = true;
                }
                if found {
                    let raw = &self.src[start..self.pos - 1];
                    if raw.len() > MAX_WORD {
                        return Err(
                            self.err("too long parameter, probably missing terminating quote")
                        );
                    }
                    words.push(Word {
                        bytes: unescape(raw),
                        line: start_line,
                        quoted: was_quoted,
                    });
                    if ch == b';' {
                        return Ok(End::Semicolon);
                    }
                    if ch == b'{' {
                        return Ok(End::BlockStart);
                    }
                }
            }
        }
    }

    /// After the `{` of a `*_by_lua_block`: the Lua code up to the matching
    /// `}` (not included), skipping `{` and `}` inside Lua strings, long
    /// brackets (`[==[ … ]==]`) and comments (`-- …`, `--[[ … ]]`).
    pub fn lua_block(&mut self) -> Result<Vec<u8>, LexError> {
        let start = self.pos;
        let mut depth = 0usize;
        let eof = |l: &Lexer| l.err("unexpected end of file, expecting \"}\"");
        loop {
            let Some(&ch) = self.src.get(self.pos) else {
                return Err(eof(self));
            };
            match ch {
                b'\n' => {
                    self.line += 1;
                    self.pos += 1;
                }
                b'{' => {
                    depth += 1;
                    self.pos += 1;
                }
                b'}' => {
                    if depth == 0 {
                        let body = self.src[start..self.pos].to_vec();
                        self.pos += 1;
                        return Ok(body);
                    }
                    depth -= 1;
                    self.pos += 1;
                }
                b'"' | b'\'' => self.lua_string(ch)?,
                b'[' => {
                    if let Some(level) = self.long_open(self.pos) {
                        self.pos += level + 2;
                        self.long_close(level)?;
                    } else {
                        self.pos += 1;
                    }
                }
                b'-' if self.src.get(self.pos + 1) == Some(&b'-') => {
                    self.pos += 2;
                    if let Some(level) = self.long_open(self.pos) {
                        self.pos += level + 2;
                        self.long_close(level)?;
                    } else {
                        while let Some(&c) = self.src.get(self.pos) {
                            if c == b'\n' {
                                break;
                            }
                            self.pos += 1;
                        }
                    }
                }
                _ => self.pos += 1,
            }
        }
    }

    /// A quoted Lua string on one line, with `\` escapes.
    fn lua_string(&mut self, quote: u8) -> Result<(), LexError> {
        self.pos += 1;
        loop {
            match self.src.get(self.pos) {
                None | Some(b'\n') => return Err(self.err("unterminated Lua string")),
                Some(&b'\\') => self.pos += 2,
                Some(&c) if c == quote => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(_) => self.pos += 1,
            }
        }
    }

    /// `[`, then `level` `=`, then `[` at `at`: the level.
    fn long_open(&self, at: usize) -> Option<usize> {
        if self.src.get(at) != Some(&b'[') {
            return None;
        }
        let level = self.src[at + 1..]
            .iter()
            .take_while(|&&c| c == b'=')
            .count();
        (self.src.get(at + 1 + level) == Some(&b'[')).then_some(level)
    }

    /// Skips to past `]`, `level` `=`, `]`.
    fn long_close(&mut self, level: usize) -> Result<(), LexError> {
        loop {
            match self.src.get(self.pos) {
                None => return Err(self.err("unterminated Lua long bracket")),
                Some(&b'\n') => {
                    self.line += 1;
                    self.pos += 1;
                }
                Some(&b']') => {
                    let eqs = self.src[self.pos + 1..]
                        .iter()
                        .take_while(|&&c| c == b'=')
                        .count();
                    if eqs == level && self.src.get(self.pos + 1 + eqs) == Some(&b']') {
                        self.pos += eqs + 2;
                        return Ok(());
                    }
                    self.pos += 1;
                }
                Some(_) => self.pos += 1,
            }
        }
    }
}

/// Copies a word out as nginx does: `\"`, `\'`, `\\` lose the backslash;
/// `\t`, `\r`, `\n` become TAB, CR, LF; any other `\x` keeps it.
fn unescape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\\' {
            match raw.get(i + 1) {
                Some(b'"' | b'\'' | b'\\') => i += 1,
                Some(b't') => {
                    out.push(b'\t');
                    i += 2;
                    continue;
                }
                Some(b'r') => {
                    out.push(b'\r');
                    i += 2;
                    continue;
                }
                Some(b'n') => {
                    out.push(b'\n');
                    i += 2;
                    continue;
                }
                _ => {}
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every directive of `src` as (words, end), until the end.
    fn all(src: &str) -> Result<Vec<(Vec<String>, End)>, LexError> {
        let mut l = Lexer::new(src.as_bytes());
        let mut out = vec![];
        let mut w = vec![];
        loop {
            let end = l.next(&mut w)?;
            out.push((
                w.iter()
                    .map(|w| String::from_utf8_lossy(&w.bytes).into_owned())
                    .collect(),
                end,
            ));
            if end == End::Eof {
                return Ok(out);
            }
        }
    }

    fn words(src: &str) -> Vec<String> {
        all(src).unwrap().remove(0).0
    }

    #[test]
    fn comments_start_only_at_a_word() {
        assert_eq!(
            words("return 200 foo#bar; # not this"),
            ["return", "200", "foo#bar"]
        );
        assert_eq!(words("a \"#x\";"), ["a", "#x"]);
    }

    #[test]
    fn quotes_escapes_and_empty_arguments() {
        assert_eq!(
            words("proxy_set_header Connection \"\";"),
            ["proxy_set_header", "Connection", ""]
        );
        assert_eq!(
            words(r#"a "x\"y" 'p\'q' \\ a\nb c\d;"#),
            ["a", "x\"y", "p'q", "\\", "a\nb", "c\\d"]
        );
        // A quote inside a word is literal.
        assert_eq!(words("a right-\"quote\";"), ["a", "right-\"quote\""]);
        // After a closing quote: space, ; or { — or ) for if conditions.
        assert_eq!(words("if ($x ~ \"a b\") {"), ["if", "($x", "~", "a b", ")"]);
        assert_eq!(
            all("a \"left\"-quote;").unwrap_err().message,
            "unexpected \"-\""
        );
    }

    #[test]
    fn variables_keep_their_braces_and_other_braces_end_words() {
        assert_eq!(
            words("try_files /abc/${uri} /abc/${uri}.html =404;"),
            ["try_files", "/abc/${uri}", "/abc/${uri}.html", "=404"]
        );
        let a = all("location /foo{}").unwrap();
        assert_eq!(
            a[0],
            (vec!["location".into(), "/foo".into()], End::BlockStart)
        );
        assert_eq!(a[1].1, End::BlockEnd);
        // `}` does not end an unquoted word.
        assert_eq!(
            all("return 200 x }").unwrap_err().message,
            "unexpected \"}\""
        );
    }

    #[test]
    fn errors_are_nginx_s() {
        assert_eq!(all(";").unwrap_err().message, "unexpected \";\"");
        assert_eq!(all("a b }").unwrap_err().message, "unexpected \"}\"");
        let e = all("a\nb\n\"c\"x;").unwrap_err();
        assert_eq!((e.line, e.message.as_str()), (3, "unexpected \"x\""));
        assert_eq!(
            all("a").unwrap_err().message,
            "unexpected end of file, expecting \";\" or \"}\""
        );
        assert_eq!(
            all(&format!("a \"{}\";", "x".repeat(5000)))
                .unwrap_err()
                .line,
            1
        );
    }

    #[test]
    fn lines_are_those_of_the_first_word() {
        let mut l = Lexer::new(b"\n\n  a\n b;\n");
        let mut w = vec![];
        l.next(&mut w).unwrap();
        assert_eq!((w[0].line, w[1].line), (3, 4));
    }

    #[test]
    fn lua_bodies_skip_braces_in_strings_comments_and_long_brackets() {
        let src = b" local t = {} -- } not this\n local s = \"}\" .. '{' .. [==[ } ]==] --[[ { ]] ngx.say(#t) }after;";
        let mut l = Lexer::new(src);
        let body = l.lua_block().unwrap();
        assert!(
            body.ends_with(b"ngx.say(#t) "),
            "{}",
            String::from_utf8_lossy(&body)
        );
        let mut w = vec![];
        assert_eq!(l.next(&mut w).unwrap(), End::Semicolon);
        assert_eq!(w[0].bytes, b"after");
        assert!(Lexer::new(b" { ").lua_block().is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_lex_without_panicking(src in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let mut l = Lexer::new(&src);
            let mut w = vec![];
            for _ in 0..400 {
                match l.next(&mut w) {
                    Ok(End::Eof) | Err(_) => break,
                    Ok(End::BlockStart) => { let _ = l.lua_block(); }
                    Ok(_) => {}
                }
            }
        }
    }
}
