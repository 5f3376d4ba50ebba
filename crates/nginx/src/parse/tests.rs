//! The tree over in-memory files.

use std::collections::BTreeMap;
use std::io;

use super::*;

/// Files by path.
struct Mem(BTreeMap<PathBuf, Vec<u8>>);

impl Mem {
    fn new(files: &[(&str, &str)]) -> Mem {
        Mem(files
            .iter()
            .map(|(p, t)| (PathBuf::from(p), t.as_bytes().to_vec()))
            .collect())
    }
}

impl Loader for Mem {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.0
            .get(path)
            .cloned()
            .ok_or_else(|| io::ErrorKind::NotFound.into())
    }

    fn glob(&self, pattern: &Path) -> io::Result<Vec<PathBuf>> {
        let pat = pattern.to_string_lossy();
        Ok(self
            .0
            .keys()
            .filter(|p| glob_match(pat.as_bytes(), p.to_string_lossy().as_bytes()))
            .cloned()
            .collect())
    }
}

fn names(ds: &[Directive]) -> Vec<&str> {
    ds.iter().map(|d| d.name.as_str()).collect()
}

#[test]
fn includes_resolve_against_the_main_files_directory_and_globs_sort() {
    let m = Mem::new(&[
        (
            "/etc/nginx/nginx.conf",
            "http {\n include conf.d/*.conf;\n include missing/*.conf;\n}\n",
        ),
        ("/etc/nginx/conf.d/b.conf", "server { include snippets/x; }"),
        (
            "/etc/nginx/conf.d/a.conf",
            "upstream u { server 127.0.0.1:1; }",
        ),
        ("/etc/nginx/conf.d/.hidden.conf", "bogus"),
        ("/etc/nginx/snippets/x", "listen 80;"),
        ("/etc/nginx/conf.d/snippets/x", "never included;"),
    ]);
    let c = parse_file(&m, Path::new("/etc/nginx/nginx.conf")).unwrap();
    let paths: Vec<String> = c
        .files
        .iter()
        .map(|f| f.path.display().to_string())
        .collect();
    assert_eq!(
        paths,
        [
            "/etc/nginx/nginx.conf",
            "/etc/nginx/conf.d/a.conf",
            "/etc/nginx/conf.d/b.conf",
            "/etc/nginx/snippets/x"
        ],
        "breadth first, as crossplane numbers them"
    );
    let http = &c.files[0].directives[0];
    let block = http.block.as_ref().unwrap();
    assert_eq!(block[0].includes, [1, 2]);
    assert!(block[1].includes.is_empty(), "no match is fine");
    assert_eq!(
        c.files[2].directives[0].block.as_ref().unwrap()[0].includes,
        [3]
    );
}

#[test]
fn a_missing_explicit_include_is_an_error_naming_the_including_line() {
    let m = Mem::new(&[(
        "/c/nginx.conf",
        "events {}\nhttp {\n  include nope.conf;\n}\n",
    )]);
    let e = parse_file(&m, Path::new("/c/nginx.conf")).unwrap_err();
    assert_eq!(
        (e.file.display().to_string(), e.line),
        ("/c/nginx.conf".into(), 3)
    );
    assert!(
        e.message.starts_with("open() \"/c/nope.conf\" failed"),
        "{e}"
    );
}

#[test]
fn an_error_in_an_included_file_names_that_file() {
    let m = Mem::new(&[
        ("/c/nginx.conf", "include a.conf;"),
        ("/c/a.conf", "\nx y\n}"),
    ]);
    let e = parse_file(&m, Path::new("/c/nginx.conf")).unwrap_err();
    assert_eq!(e.to_string(), "/c/a.conf:3: unexpected \"}\"");
}

#[test]
fn include_cycles_end() {
    let m = Mem::new(&[
        ("/c/nginx.conf", "include a.conf;"),
        ("/c/a.conf", "include nginx.conf;"),
    ]);
    let c = parse_file(&m, Path::new("/c/nginx.conf")).unwrap();
    assert_eq!(c.files.len(), 2);
    assert_eq!(c.files[1].directives[0].includes, [0]);
}

#[test]
fn data_blocks_lua_blocks_and_block_errors() {
    let m = Mem::new(&[(
        "/c/nginx.conf",
        "http {\n map $http_upgrade $connection_upgrade {\n  default upgrade;\n  '' close;\n }\n \
         server { location / { content_by_lua_block { ngx.say(\"}\") } } }\n}\n",
    )]);
    let c = parse_file(&m, Path::new("/c/nginx.conf")).unwrap();
    let http = c.files[0].directives[0].block.as_ref().unwrap();
    let map = &http[0];
    assert!(map.data);
    assert_eq!(names(map.block.as_ref().unwrap()), ["default", ""]);
    assert_eq!(map.block.as_ref().unwrap()[1].args, ["close"]);
    let loc = &http[1].block.as_ref().unwrap()[0].block.as_ref().unwrap()[0];
    assert_eq!(loc.name, "content_by_lua_block");
    assert_eq!(loc.args, [" ngx.say(\"}\") "]);
    assert!(loc.block.is_none());
    let unclosed = Mem::new(&[("/c/n.conf", "http {\n")]);
    let e = parse_file(&unclosed, Path::new("/c/n.conf")).unwrap_err();
    assert_eq!(e.message, "unexpected end of file, expecting \"}\"");
    let extra = Mem::new(&[("/c/n.conf", "events {}\n}\n")]);
    assert_eq!(
        parse_file(&extra, Path::new("/c/n.conf")).unwrap_err().line,
        2
    );
}

#[test]
fn an_nginx_t_dump_is_read_as_its_files() {
    let dump = "nginx: the configuration file /etc/nginx/nginx.conf syntax is ok\n\
                # configuration file /etc/nginx/nginx.conf:\nhttp {\n include /etc/nginx/conf.d/*.conf;\n}\n\n\
                # configuration file /etc/nginx/conf.d/app.conf:\nupstream app { server 10.0.0.5:80; }\n";
    let c = parse_dump(&Mem::new(&[]), dump.as_bytes()).unwrap();
    assert_eq!(c.files.len(), 2);
    assert_eq!(c.files[1].directives[0].name, "upstream");
    assert_eq!(c.files[1].directives[0].line, 1);
    assert_eq!(
        c.files[0].directives[0].block.as_ref().unwrap()[0].includes,
        [1]
    );
}

#[test]
fn glob_matching_is_glob_s() {
    assert!(glob_match(b"/a/*.conf", b"/a/x.conf"));
    assert!(!glob_match(b"/a/*.conf", b"/a/.x.conf"), "no dotfiles");
    assert!(!glob_match(b"/a/*.conf", b"/a/b/x.conf"), "no slash");
    assert!(glob_match(b"/a/x?.c[a-z]nf", b"/a/x1.conf"));
    assert!(!glob_match(b"/a/[!x]*", b"/a/xy"));
}

/// The shared corpus's files, for the mutation fuzzing below (empty where
/// the corpus is not beside the project).
fn corpus_texts() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus/nginx");
    let mut out = Vec::new();
    let mut dirs = vec![root];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "conf") {
                out.extend(std::fs::read(&p).ok());
            }
        }
    }
    out
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

    /// Mutations of real configurations (bytes flipped, inserted, cut):
    /// a tree or a syntax error, never a panic or a hang.
    #[test]
    fn mutated_corpus_files_parse_or_fail_cleanly(
        pick in 0usize..64,
        edits in proptest::collection::vec((0usize..4096, proptest::num::u8::ANY, 0u8..3), 1..12),
    ) {
        let texts = corpus_texts();
        let mut bytes = if texts.is_empty() { b"http { server { listen 80; } }".to_vec() } else { texts[pick % texts.len()].clone() };
        for (at, b, kind) in edits {
            let at = at % (bytes.len() + 1);
            match kind {
                0 if at < bytes.len() => bytes[at] = b,
                1 => bytes.insert(at, b),
                _ if at < bytes.len() => { bytes.remove(at); }
                _ => {}
            }
        }
        let m = Mem(std::iter::once((PathBuf::from("/c/nginx.conf"), bytes.clone())).collect());
        let _ = parse_file(&m, Path::new("/c/nginx.conf"));
        let _ = parse_dump(&m, &bytes);
        if let Ok(c) = parse_file(&m, Path::new("/c/nginx.conf")) {
            let _ = crate::check::check(&c, None);
        }
    }
}
