//! `timewait exporter` against a namespace with known TIME_WAIT, scraped
//! directly and by a real Prometheus; and the files under `deploy/`
//! checked by promtool and against what the exporter serves.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::netns::Netns;
use crate::harness::peer::running_out;
use crate::harness::traffic::client_closes_first;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

/// A running exporter, killed when dropped.
struct Exporter {
    child: Child,
    addr: SocketAddr,
}

impl Exporter {
    fn start(args: &[&str]) -> Exporter {
        let mut child = Command::new(env!("CARGO_BIN_EXE_timewait"))
            .args(["exporter", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "timewait exporter: serving http://ADDR/metrics for namespace …"
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or_else(|| panic!("exporter did not start: {line:?}"))
            .parse()
            .unwrap();
        Exporter { child, addr }
    }

    fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path)
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// `promtool check metrics` on `text`.
fn promtool_check_metrics(text: &str) {
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; .ci/run installs it)");
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let o = p.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A namespace with 40 TIME_WAIT toward :5000 and 25 toward :5001.
fn namespace_with_time_wait(tag: &str) -> Option<Netns> {
    let ns = Netns::new(tag)?;
    ns.run(|| {
        let l0 = TcpListener::bind(("127.0.0.1", 5000)).unwrap();
        let l1 = TcpListener::bind(("127.0.0.1", 5001)).unwrap();
        client_closes_first(&l0, (Ipv4Addr::LOCALHOST, 5000).into(), 40);
        client_closes_first(&l1, (Ipv4Addr::LOCALHOST, 5001).into(), 25);
    });
    Some(ns)
}

#[test]
fn metrics_match_ss_and_pass_promtool() {
    let Some(ns) = namespace_with_time_wait("exporter") else {
        return;
    };
    let exporter = Exporter::start(&["--netns", ns.name(), "--cache-ms", "0"]);
    let (status, text) = exporter.get("/metrics");
    assert_eq!(status, 200, "{text}");
    promtool_check_metrics(&text);
    let ss = ns.ss_time_wait().len() as f64;
    assert_eq!(ss, 65.0);
    assert_eq!(
        value(&text, "timewait_sockets{state=\"TIME_WAIT\"}"),
        Some(ss)
    );
    assert_eq!(value(&text, "timewait_sockstat_time_wait"), Some(ss));
    let dest = |port: u16| {
        format!("{{local_ip=\"127.0.0.1\",remote_ip=\"127.0.0.1\",remote_port=\"{port}\"}}")
    };
    assert_eq!(
        value(
            &text,
            &format!("timewait_destination_time_wait{}", dest(5000))
        ),
        Some(40.0)
    );
    assert_eq!(
        value(
            &text,
            &format!("timewait_destination_time_wait{}", dest(5001))
        ),
        Some(25.0)
    );
    // The namespace's own range (the default), its kernel counters.
    assert_eq!(
        value(&text, "timewait_sysctl_ip_local_port_range_low"),
        Some(32768.0)
    );
    assert!(
        value(&text, "timewait_tcp_time_wait_entered_total").is_some(),
        "{text}"
    );
    assert_eq!(exporter.get("/healthz"), (200, "ok\n".into()));
    assert_eq!(exporter.get("/nope").0, 404);
    // --top bounds the series: one destination, the other summed.
    let top1 = Exporter::start(&["--netns", ns.name(), "--top", "1"]);
    let (_, text) = top1.get("/metrics");
    let other = "{local_ip=\"other\",remote_ip=\"other\",remote_port=\"other\"}";
    assert_eq!(
        value(
            &text,
            &format!("timewait_destination_time_wait{}", dest(5000))
        ),
        Some(40.0)
    );
    assert_eq!(
        value(&text, &format!("timewait_destination_time_wait{other}")),
        Some(25.0)
    );
    assert_eq!(
        value(
            &text,
            &format!("timewait_destination_time_wait{}", dest(5001))
        ),
        None
    );
}

/// The series a census gives, by name and labels (scrape timings and
/// collection problems left out).
fn census_series(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            [
                "timewait_sockets{",
                "timewait_destination_",
                "timewait_port_headroom",
                "timewait_server_",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `--live`: the counts kept by the BPF programs are the dump's, series by
/// series, and follow sockets made after the count began (new listeners
/// included: the count starts again when the service ports change).
#[test]
fn with_live_the_exporter_serves_the_dumps_numbers_and_follows_new_sockets() {
    let Some(ns) = namespace_with_time_wait("exporter-live") else {
        return;
    };
    let live = Exporter::start(&["--netns", ns.name(), "--cache-ms", "0", "--live"]);
    let dump = Exporter::start(&["--netns", ns.name(), "--cache-ms", "0"]);
    let (status, text) = live.get("/metrics");
    assert_eq!(status, 200, "{text}");
    promtool_check_metrics(&text);
    assert_eq!(census_series(&text), census_series(&dump.get("/metrics").1));
    assert_eq!(
        value(&text, "timewait_sockets{state=\"TIME_WAIT\"}"),
        Some(65.0)
    );
    // What the live count cannot know is said, not shown as 0.
    assert_eq!(
        value(
            &text,
            "timewait_collection_problem{what=\"SYN_RECV sockets\",cause=\"other\"}"
        ),
        Some(1.0)
    );
    // Ten more toward :5000, and two connections left open to :5001.
    let open = ns.run(|| {
        let l0 = TcpListener::bind(("127.0.0.1", 5000)).unwrap();
        client_closes_first(&l0, (Ipv4Addr::LOCALHOST, 5000).into(), 10);
        let l1 = TcpListener::bind(("127.0.0.1", 5001)).unwrap();
        let open: Vec<_> = (0..2)
            .map(|_| {
                let c = TcpStream::connect(("127.0.0.1", 5001)).unwrap();
                (c, l1.accept().unwrap().0)
            })
            .collect();
        (l1, open)
    });
    let text = live.get("/metrics").1;
    assert_eq!(census_series(&text), census_series(&dump.get("/metrics").1));
    let dest = |port: u16| {
        format!("{{local_ip=\"127.0.0.1\",remote_ip=\"127.0.0.1\",remote_port=\"{port}\"}}")
    };
    let at = |name: &str, port| value(&text, &format!("{name}{}", dest(port)));
    assert_eq!(at("timewait_destination_time_wait", 5000), Some(50.0));
    assert_eq!(at("timewait_destination_established", 5001), Some(2.0));
    assert_eq!(
        value(&text, "timewait_sockets{state=\"TIME_WAIT\"}"),
        Some(ns.ss_time_wait().len() as f64)
    );
    drop(open);
}

/// A free loopback port (bound then released: Prometheus needs a number).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_real_prometheus_scrapes_the_exporter() {
    let Some(ns) = namespace_with_time_wait("prom") else {
        return;
    };
    let exporter = Exporter::start(&["--netns", ns.name()]);
    let dir = std::env::temp_dir().join(format!("timewait-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: timewait\n    static_configs:\n      - targets: ['{}']\n",
            exporter.addr
        ),
    )
    .unwrap();
    let web = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let mut prom = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (Debian package prometheus; .ci/run installs it)");
    let query = "/api/v1/query?query=timewait_destination_time_wait%7Bremote_port%3D%225000%22%7D";
    let mut answer = String::new();
    // Bounded: up to 60 polls half a second apart (startup plus a scrape).
    for _ in 0..60 {
        std::thread::sleep(Duration::from_millis(500));
        if let Ok(mut s) = TcpStream::connect(web) {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = write!(
                s,
                "GET {query} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            );
            answer.clear();
            let _ = s.read_to_string(&mut answer);
            if answer.contains("\"value\"") {
                break;
            }
        }
    }
    let _ = prom.kill();
    let _ = prom.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(answer.contains("\"job\":\"timewait\""), "{answer}");
    assert!(
        answer.contains(",\"40\"]"),
        "the series came back with its value: {answer}"
    );
}

#[test]
fn the_alerting_rules_pass_promtool_check_and_their_unit_tests() {
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts_test.yml"],
    ] {
        let o = Command::new("promtool")
            .args(&args)
            .current_dir(format!("{DEPLOY}/prometheus"))
            .output()
            .expect("promtool");
        assert!(
            o.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// Every metric the dashboard and the alerts query is one the exporter
/// serves (read from its own output over a recorded host).
#[test]
fn the_dashboard_and_alerts_name_only_metrics_the_exporter_serves() {
    let o = Command::new(env!("CARGO_BIN_EXE_timewait"))
        .args([
            "exporter",
            "--from",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/testdata/hosts/netns-mixed/snapshot.json"
            ),
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    let mut text = String::from_utf8(o.stdout).unwrap();
    promtool_check_metrics(&text);
    // With --trace, also the tracer's families (their names, from the same
    // renderer; the values are checked against the kernel above).
    let snap = timewait_snapshot::Snapshot::from_json(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/hosts/netns-mixed/snapshot.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut one =
        timewait_trace::Tally::new(timewait_trace::Scope::All)
            .report(1.0, "all", 0, 5, &|_| String::new());
    one.processes.push(timewait_trace::ProcessReport {
        pid: 1,
        comm: Some("app".into()),
        netns: None,
        connects: 2,
        errors: [("EADDRNOTAVAIL".to_string(), 1)].into(),
        closed_first: 1,
        server_closed_first: 1,
        resets: 0,
        destinations: vec![],
    });
    text.push_str(&timewait_exporter::metrics::render(
        &snap,
        Some(&timewait_exporter::TraceState::Running(one)),
        5,
        0.0,
    ));
    let served: std::collections::BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{DEPLOY}/grafana/timewait.json")).unwrap(),
    )
    .unwrap();
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 8);
    exprs.push(std::fs::read_to_string(format!("{DEPLOY}/prometheus/alerts.yml")).unwrap());
    for e in &exprs {
        for (i, _) in e.match_indices("timewait_") {
            let name: String = e[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                served.contains(&name),
                "{name} (in {e:?}) is not served: {served:?}"
            );
        }
    }
}

#[test]
fn with_trace_the_exporter_counts_each_process_connect_errors_and_first_closes() {
    let Some((ns, mut server, mut client)) = running_out("exp-trace", "40000 40049", 5000, 80)
    else {
        return;
    };
    // It prints its address once the tracer records.
    let exp = Exporter::start(&["--netns", ns.name(), "--trace", "--cache-ms", "0"]);
    server.go();
    client.go();
    let did = client.result();
    let failed = did["errors"]["EADDRNOTAVAIL"].as_f64().unwrap();
    let ok = did["ok"].as_f64().unwrap();
    let labels = format!("{{pid=\"{}\",comm=\"python3\"", client.pid);
    let errors = format!("timewait_process_connect_errors_total{labels},errno=\"EADDRNOTAVAIL\"}}");
    let closed = format!("timewait_process_closed_first_total{labels}}}");
    // The tracer publishes its tally once a second: wait (bounded) for it.
    let mut text = String::new();
    for _ in 0..200 {
        text = exp.get("/metrics").1;
        if value(&text, &errors) == Some(failed) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(value(&text, &errors), Some(failed), "{text}");
    assert_eq!(value(&text, &closed), Some(ok), "{text}");
    assert_eq!(
        value(&text, &format!("timewait_process_connects_total{labels}}}")),
        Some(80.0)
    );
    assert_eq!(value(&text, "timewait_trace_running"), Some(1.0));
    assert_eq!(value(&text, "timewait_trace_events_lost_total"), Some(0.0));
    promtool_check_metrics(&text);
    // SIGTERM: the tracer's instance goes with it.
    let pid = exp.child.id();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut exp = exp;
    let status = exp.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let left = std::fs::read_dir("/sys/kernel/tracing/instances")
        .unwrap()
        .flatten()
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("timewait-{pid}-"))
        });
    assert!(!left, "the exporter's tracefs instance was left behind");
}
