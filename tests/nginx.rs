//! `timewait nginx parse` against crossplane (PyPI), the differential
//! oracle: every configuration of the shared corpus and of ours is parsed
//! by both and compared node by node (file, line, directive, args,
//! includes). crossplane's documented differences from nginx are
//! normalised away, and the configurations where crossplane itself is
//! wrong are listed with the reason and what we produce instead.
//! `nginx -t` judges both ways: a file we refuse, nginx refuses at the same
//! line with the same message; a file we accept has no syntax error for
//! nginx either. crossplane comes from `.venv/` (set up by `.ci/run`).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const SHARED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/corpus/nginx/crossplane"
);
const OURS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/nginx");

fn crossplane() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/crossplane");
    assert!(
        p.exists(),
        "crossplane not found at {}: `python3 -m venv .venv && .venv/bin/pip install crossplane` (what .ci/run does)",
        p.display()
    );
    p
}

/// Main configurations: `nginx.conf` of each corpus directory, or each
/// `.conf` where a directory has no `nginx.conf`.
fn corpus() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for root in [SHARED, OURS] {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
            .unwrap_or_else(|e| panic!("{root}: {e}"))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for d in dirs {
            let main = d.join("nginx.conf");
            if main.exists() {
                out.push(main);
                continue;
            }
            let mut confs: Vec<PathBuf> = std::fs::read_dir(&d)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "conf"))
                .collect();
            confs.sort();
            out.extend(confs);
        }
    }
    out
}

/// nginx's copy-out of a word (crossplane keeps the escapes verbatim).
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.peek() {
                Some('"' | '\'' | '\\') => {
                    out.push(it.next().unwrap());
                    continue;
                }
                Some('t') => {
                    it.next();
                    out.push('\t');
                    continue;
                }
                Some('r') => {
                    it.next();
                    out.push('\r');
                    continue;
                }
                Some('n') => {
                    it.next();
                    out.push('\n');
                    continue;
                }
                _ => {}
            }
        }
        out.push(c);
    }
    out
}

/// (file, line, directive, args, includes) of every node, depth first.
type Node = (String, u64, String, Vec<String>, Option<Vec<u64>>);

fn nodes(doc: &Value, theirs: bool) -> Vec<Node> {
    fn walk(file: &str, ds: &Value, theirs: bool, out: &mut Vec<Node>) {
        for d in ds.as_array().unwrap() {
            let name = d["directive"].as_str().unwrap().to_string();
            // crossplane reports comments inside a directive as "#" nodes.
            if theirs && name == "#" {
                continue;
            }
            let mut args: Vec<String> = d["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
            // Lua bodies are verbatim for both (nginx does not unescape them).
            if theirs && !name.ends_with("_by_lua_block") {
                args = args.iter().map(|a| unescape(a)).collect();
            } else if name == "if" {
                // crossplane strips the condition's parentheses, as nginx's
                // ngx_http_rewrite_if_condition does after tokenizing.
                if let Some(first) = args.first_mut() {
                    *first = first.trim_start_matches('(').to_string();
                }
                if let Some(last) = args.last_mut() {
                    *last = last.trim_end_matches(')').to_string();
                }
                args.retain(|a| !a.is_empty());
            }
            let includes = d["includes"]
                .as_array()
                .map(|v| v.iter().map(|i| i.as_u64().unwrap()).collect());
            out.push((
                file.to_string(),
                d["line"].as_u64().unwrap(),
                name,
                args,
                includes,
            ));
            if let Some(b) = d.get("block") {
                walk(file, b, theirs, out);
            }
        }
    }
    let mut out = Vec::new();
    for c in doc["config"].as_array().unwrap() {
        walk(c["file"].as_str().unwrap(), &c["parsed"], theirs, &mut out);
    }
    out
}

fn run(program: &Path, args: &[&str]) -> (Option<i32>, Value, String) {
    let o = Command::new(program).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let v = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{program:?} {args:?}: {e}: {stderr}"));
    (o.status.code(), v, stderr)
}

/// What `nginx -t` says of a configuration (Debian nginx-light; `.ci/run`
/// installs it).
fn nginx_t(path: &Path) -> String {
    let o = Command::new("nginx")
        .args(["-t", "-q", "-c"])
        .arg(path)
        .output()
        .expect("nginx (Debian nginx-light; .ci/run installs it)");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Where crossplane is known to differ from nginx, and what we must give.
fn known_divergence(path: &Path) -> Option<&'static str> {
    let dir = path.parent()?.file_name()?.to_str()?;
    Some(match dir {
        // nginx -t: `unknown directive`/arity errors need nginx's module tables;
        // crossplane refuses `user;` (no argument), which nginx -t refuses too.
        "bad-args" => "crossplane checks arity",
        // crossplane splits "left"-quote into two words; nginx refuses it.
        "quote-behavior" => "not valid nginx",
        // crossplane's lexer joins `/abc/${uri} /abc/${uri}.html` into one word.
        "messy" => "crossplane's ${ bug",
        // crossplane's Lua lexer does not know long brackets.
        "lua-long-brackets" => "crossplane's Lua lexer",
        _ => return None,
    })
}

#[test]
fn every_corpus_configuration_parses_as_crossplane_parses_it() {
    let cp = crossplane();
    let bin = Path::new(env!("CARGO_BIN_EXE_timewait"));
    let mut compared = 0;
    for path in corpus() {
        let file = path.to_str().unwrap();
        let (code, ours, stderr) = run(bin, &["nginx", "parse", file, "--json"]);
        let (_, theirs, _) = run(&cp, &["parse", file]);
        match known_divergence(&path) {
            Some("not valid nginx") => {
                assert_eq!(code, Some(2), "{file}: {ours}");
                assert!(
                    stderr.contains(&format!("{file}:1: unexpected \"-\"")),
                    "{stderr}"
                );
            }
            Some("crossplane's Lua lexer") => {
                assert_eq!(theirs["status"], "failed", "{file}");
                let n = nodes(&ours, false);
                let lua = n.iter().find(|n| n.2 == "content_by_lua_block").unwrap();
                assert!(
                    lua.3[0].contains("ngx.say(s)") && lua.3[0].contains("]==]"),
                    "{lua:?}"
                );
            }
            Some("crossplane's ${ bug") => {
                let n = nodes(&ours, false);
                let t = n.iter().find(|n| n.2 == "try_files").unwrap();
                assert_eq!(t.3, ["/abc/${uri}", "/abc/${uri}.html", "=404"]);
                // Every other node agrees.
                let (a, b): (Vec<_>, Vec<_>) = (
                    n.into_iter().filter(|n| n.2 != "try_files").collect(),
                    nodes(&theirs, true)
                        .into_iter()
                        .filter(|n| n.2 != "try_files")
                        .collect(),
                );
                assert_eq!(a, b, "{file}");
                compared += 1;
            }
            Some(_) => {
                let ours_nodes = nodes(&ours, false);
                assert!(
                    ours_nodes.iter().any(|n| n.2 == "user"),
                    "we keep it: {ours}"
                );
            }
            None if theirs["status"] == "failed" => {
                // Both fail; nginx -t judges where: the same message and line.
                assert_eq!(
                    code,
                    Some(2),
                    "{file}: crossplane failed, we did not: {ours}"
                );
                let e = &ours["errors"][0];
                let (ef, el, msg) = (
                    e["file"].as_str().unwrap(),
                    &e["line"],
                    e["error"].as_str().unwrap(),
                );
                let judged = nginx_t(&path);
                assert!(
                    judged.contains(&format!("{msg} in {ef}:{el}")),
                    "{file}: we say {msg} at {ef}:{el}; nginx -t says {judged}"
                );
                compared += 1;
            }
            None => {
                assert_eq!(code, Some(0), "{file}: {stderr}");
                assert_eq!(nodes(&ours, false), nodes(&theirs, true), "{file}");
                // What we accept, nginx's tokenizer accepts too (it may refuse
                // it for other reasons: unknown modules, names it resolves).
                let judged = nginx_t(&path);
                for syntax in ["unexpected", "is not terminated", "too long parameter"] {
                    assert!(
                        !judged.contains(syntax),
                        "{file}: we accept it, nginx -t says {judged}"
                    );
                }
                compared += 1;
            }
        }
    }
    assert!(compared >= 17, "{compared} configurations compared");
}

#[test]
fn a_syntax_error_is_one_line_with_file_and_line_and_exit_2() {
    let dir = std::env::temp_dir().join(format!("timewait-nginx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("nginx.conf");
    std::fs::write(&f, "events {}\nhttp {\n  server {\n    return 200 x }\n}\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_timewait"))
        .args(["nginx", "parse", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("{}:4: unexpected \"}}\"", f.display())),
        "{err}"
    );
    // An nginx -T dump on standard input.
    let dump = format!("# configuration file {}:\nevents {{}}\n", f.display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_timewait"))
        .args(["nginx", "parse", "-", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), dump.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["config"][0]["parsed"][0]["directive"], "events");
    let _ = std::fs::remove_dir_all(&dir);
}

fn check(args: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_timewait"))
        .args(["nginx", "check"])
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

fn found(json: &str) -> Vec<(String, u64)> {
    let v: Value = serde_json::from_str(json).unwrap();
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["code"].as_str().unwrap().to_string(),
                f["line"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Our corpus with its expected findings, in both version regimes.
#[test]
fn check_finds_the_articles_pitfalls_at_their_lines_per_version() {
    let upstreams = format!("{OURS}/upstreams/nginx.conf");
    let (code, out) = check(&[&upstreams, "--nginx-version", "1.22.1", "--json"]);
    assert_eq!(code, Some(1));
    let expected_old = [
        ("nginx-upstream-no-keepalive", 4),
        ("nginx-connection-close-forwarded", 18),
        ("nginx-upstream-http10", 18),
        ("nginx-header-inheritance-lost", 22),
        ("nginx-connection-close-forwarded", 29),
        ("nginx-upstream-http10", 29),
        ("nginx-upstream-no-keepalive", 29),
        ("nginx-connection-close-forwarded", 32),
        ("nginx-upstream-http10", 32),
    ];
    let want: Vec<(String, u64)> = expected_old
        .iter()
        .map(|(c, l)| (c.to_string(), *l))
        .collect();
    assert_eq!(found(&out), want);
    // 1.29.7's defaults fix all but the implicit upstream and the lost headers.
    let (code, out) = check(&[&upstreams, "--nginx-version", "1.29.7", "--json"]);
    assert_eq!(code, Some(1));
    let want: Vec<(String, u64)> = [
        ("nginx-header-inheritance-lost", 22),
        ("nginx-upstream-no-keepalive", 29),
    ]
    .iter()
    .map(|(c, l)| (c.to_string(), *l))
    .collect();
    assert_eq!(found(&out), want);
    // The WebSocket map sends close on ordinary requests.
    let (_, out) = check(&[
        &format!("{OURS}/lua-and-maps/nginx.conf"),
        "--nginx-version",
        "1.29.7",
        "--json",
    ]);
    assert!(
        found(&out).contains(&("nginx-connection-close-forwarded".into(), 27)),
        "{out}"
    );
    // GitHub annotations, one per finding.
    let (_, out) = check(&[
        &upstreams,
        "--nginx-version",
        "1.29.7",
        "--format",
        "github",
    ]);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(
        out.starts_with(&format!(
            "::warning file={upstreams},line=22,title=nginx-header-inheritance-lost::"
        )),
        "{out}"
    );
    // A syntax error is exit 2, a bad version a usage error.
    assert_eq!(
        check(&[&format!("{SHARED}/missing-semicolon/broken-above.conf")]).0,
        Some(2)
    );
    assert_eq!(check(&[&upstreams, "--nginx-version", "one"]).0, Some(2));
}

/// `--diff` applied with `patch -p0` leaves nothing to report.
#[test]
fn the_diff_applies_with_patch_and_leaves_nothing_to_report() {
    let dir = std::env::temp_dir().join(format!("timewait-nginx-diff-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("conf.d")).unwrap();
    std::fs::write(
        dir.join("nginx.conf"),
        "events {}\nhttp {\n    proxy_set_header X-Real-IP $remote_addr;\n    include conf.d/*.conf;\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("conf.d/app.conf"),
        "upstream app {\n    server 127.0.0.1:8080;\n    least_conn;\n}\nserver {\n    listen 8000;\n    location / {\n        proxy_pass http://app;\n    }\n    location /api/ {\n        proxy_set_header X-Api 1;\n        proxy_pass http://app;\n    }\n}\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_timewait"))
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap()
    };
    let before = run(&[
        "nginx",
        "check",
        "nginx.conf",
        "--nginx-version",
        "1.22.1",
        "--json",
    ]);
    assert_eq!(before.status.code(), Some(1));
    assert!(found(&String::from_utf8_lossy(&before.stdout)).len() >= 6);
    let diff = run(&[
        "nginx",
        "check",
        "nginx.conf",
        "--nginx-version",
        "1.22.1",
        "--diff",
    ]);
    let diff = String::from_utf8(diff.stdout).unwrap();
    assert!(
        diff.starts_with("--- conf.d/app.conf\n+++ conf.d/app.conf\n"),
        "{diff}"
    );
    let mut p = Command::new("patch")
        .args(["-p0", "--batch"])
        .current_dir(&dir)
        .stdin(std::process::Stdio::piped())
        .output_with_stdin(diff.as_bytes());
    assert!(
        p.status.success(),
        "patch: {}{}",
        String::from_utf8_lossy(&p.stdout),
        String::from_utf8_lossy(&p.stderr)
    );
    let after = run(&[
        "nginx",
        "check",
        "nginx.conf",
        "--nginx-version",
        "1.22.1",
        "--json",
    ]);
    assert_eq!(
        after.status.code(),
        Some(0),
        "{}\n{diff}",
        String::from_utf8_lossy(&after.stdout)
    );
    // nginx agrees the patched configuration is valid.
    p = Command::new("nginx")
        .args(["-t", "-q", "-c"])
        .arg(dir.join("nginx.conf"))
        .output()
        .unwrap();
    let judged = String::from_utf8_lossy(&p.stderr);
    assert!(!judged.contains("emerg"), "{judged}");
    let _ = std::fs::remove_dir_all(&dir);
}

trait WithStdin {
    fn output_with_stdin(&mut self, input: &[u8]) -> std::process::Output;
}

impl WithStdin for Command {
    fn output_with_stdin(&mut self, input: &[u8]) -> std::process::Output {
        let mut c = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut c.stdin.take().unwrap(), input).unwrap();
        c.wait_with_output().unwrap()
    }
}
