//! nginx configuration, parsed the way nginx parses it, with no I/O.
//!
//! - [`lex`]: a port of `ngx_conf_read_token()` (src/core/ngx_conf_file.c):
//!   bytes in, words and `;`/`{`/`}` out, with nginx's quoting, escapes,
//!   `#` only at the start of a word, `${var}`, `""` as an empty argument,
//!   and its error messages; plus the Lua lexer `*_by_lua_block` bodies
//!   need (strings, long brackets, comments with braces).
//! - [`parse`]: the tree — directives with file and line, blocks, `include`
//!   resolved against the main file's directory (globs sorted, no match is
//!   fine, a missing explicit file is an error), data blocks (`types`,
//!   `map`, `geo`, `split_clients`, `charset_map`) marked as such, and
//!   `nginx -T` dumps (several files in one text). Files are read through a
//!   [`parse::Loader`] the caller gives, so everything here is testable on
//!   bytes.
//! - [`crossplane`]: the tree in crossplane's JSON shape.
#![deny(missing_docs)]

pub mod check;
pub mod crossplane;
pub mod diff;
pub mod lex;
pub mod parse;

pub use parse::{Config, Directive, File, Loader, SyntaxError, parse_dump, parse_file};
