//! Each rule with a case that fires and one that does not.

use std::collections::BTreeMap;

use timewait_model::PortRange;
use timewait_snapshot::aggregate::{Aggregator, SocketView};
use timewait_snapshot::snapshot::{CensusSource, FORMAT, VERSION};

use super::*;

/// A namespace described by its sysctls, its sockets and its counters.
struct Host {
    sysctls: BTreeMap<String, String>,
    sockets: Vec<SocketView>,
    listening: Vec<u16>,
    overflow: i64,
    tw_table: Option<u64>,
    kernel: String,
    problems: Vec<Problem>,
    kernel_log: Vec<String>,
    taken_at: u64,
}

impl Host {
    /// The kernel defaults of a fresh namespace, no sockets.
    fn new() -> Host {
        let sysctls = [
            ("net.ipv4.ip_local_port_range", "32768\t60999"),
            ("net.ipv4.ip_local_reserved_ports", ""),
            ("net.ipv4.tcp_tw_reuse", "2"),
            ("net.ipv4.tcp_timestamps", "1"),
            ("net.ipv4.tcp_max_tw_buckets", "131072"),
            ("net.ipv4.tcp_fin_timeout", "60"),
            ("net.ipv4.tcp_tw_reuse_delay", "1000"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Host {
            sysctls,
            sockets: vec![],
            listening: vec![],
            overflow: 0,
            tw_table: None,
            kernel: "6.18.44".into(),
            problems: vec![],
            kernel_log: vec![],
            taken_at: 1_000_000,
        }
    }

    fn set(mut self, k: &str, v: &str) -> Host {
        self.sysctls.insert(k.to_string(), v.to_string());
        self
    }

    fn push(&mut self, state: u8, local_port: u16, remote: &str, remote_port: u16) {
        self.sockets.push(SocketView {
            state,
            timewait_timer: state == 6,
            expires_ms: 30_000,
            local: "10.0.0.1".parse().unwrap(),
            local_port,
            remote: remote.parse().unwrap(),
            remote_port,
        });
    }

    /// `n` sockets in `state` from 10.0.0.1 toward `remote:port`, local ports from `first`.
    fn sockets(mut self, n: u16, state: u8, remote: &str, port: u16, first: u16) -> Host {
        for i in 0..n {
            self.push(state, first + i, remote, port);
        }
        self
    }

    /// `n` accepted connections in `state` on listening `port`, from many client ports.
    fn accepted(mut self, n: u16, state: u8, port: u16) -> Host {
        for i in 0..n {
            self.push(state, port, "192.0.2.7", 40000 + i);
        }
        self
    }

    fn listener(mut self, port: u16) -> Host {
        self.listening.push(port);
        self.sockets(1, 10, "0.0.0.0", 0, port)
    }

    fn snapshot(&self) -> Snapshot {
        // As the collector does: an unreadable range classifies with the default.
        let range: PortRange = self.sysctls["net.ipv4.ip_local_port_range"]
            .parse()
            .unwrap_or(timewait_model::ports::DEFAULT_PORT_RANGE);
        let mut agg = Aggregator::new(range, self.listening.clone());
        for s in &self.sockets {
            agg.add(s);
        }
        let census = agg.finish();
        let tw = self
            .tw_table
            .unwrap_or_else(|| census.states.get("TIME_WAIT").copied().unwrap_or(0));
        let files = BTreeMap::from([
            (
                "sockstat".to_string(),
                format!("sockets: used 1\nTCP: inuse 1 orphan 0 tw {tw} alloc 1 mem 1\n"),
            ),
            (
                "netstat".to_string(),
                format!(
                    "TcpExt: TW TWRecycled TCPTimeWaitOverflow\nTcpExt: 0 0 {}\n",
                    self.overflow
                ),
            ),
            (
                "snmp".to_string(),
                "Tcp: ActiveOpens CurrEstab\nTcp: 0 0\n".to_string(),
            ),
        ]);
        Snapshot {
            format: FORMAT.into(),
            version: VERSION,
            taken_at_unix_ms: self.taken_at,
            hostname: "test".into(),
            kernel_release: self.kernel.clone(),
            namespace: "current".into(),
            sysctls: self.sysctls.clone(),
            files,
            census_source: CensusSource::Netlink,
            census,
            kernel_log: self.kernel_log.clone(),
            problems: self.problems.clone(),
        }
    }

    fn findings(&self) -> Vec<Finding> {
        diagnose(&DoctorInput {
            nginx: &[],
            trace: None,
            now: &self.snapshot(),
            earlier: None,
        })
    }
}

fn codes(f: &[Finding]) -> Vec<&'static str> {
    f.iter().map(|f| f.code).collect()
}

fn find<'a>(f: &'a [Finding], code: &str) -> &'a Finding {
    f.iter()
        .find(|f| f.code == code)
        .unwrap_or_else(|| panic!("no {code} in {:?}", codes(f)))
}

#[test]
fn a_fresh_namespace_is_healthy() {
    assert_eq!(codes(&Host::new().findings()), Vec::<&str>::new());
}

#[test]
fn port_exhaustion_warns_at_70_and_is_critical_at_90_percent() {
    let narrow = || Host::new().set("net.ipv4.ip_local_port_range", "40000 40099");
    let f = narrow().sockets(69, 6, "10.1.1.1", 80, 40000).findings();
    assert!(!codes(&f).contains(&"port-exhaustion-risk"));
    let f = narrow().sockets(70, 6, "10.1.1.1", 80, 40000).findings();
    assert_eq!(find(&f, "port-exhaustion-risk").severity, Severity::Warning);
    let f = narrow()
        .sockets(85, 6, "10.1.1.1", 80, 40000)
        .sockets(5, 1, "10.1.1.1", 80, 40085)
        .findings();
    let e = find(&f, "port-exhaustion-risk");
    assert_eq!(e.severity, Severity::Critical);
    assert!(
        e.evidence
            .contains("90 of 100 usable ports in use (90.0%): 85 TIME_WAIT, 5 ESTABLISHED"),
        "{}",
        e.evidence
    );
    assert!(e.title.contains("10.0.0.1 → 10.1.1.1:80"));
    let names: Vec<&str> = e.sysctl_changes.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["net.ipv4.tcp_tw_reuse", "net.ipv4.ip_local_port_range"]
    );
    // Critical comes first.
    assert_eq!(f[0].severity, Severity::Critical);
}

#[test]
fn port_exhaustion_counts_listeners_inside_the_range_and_reports_growth() {
    let base = Host::new()
        .set("net.ipv4.ip_local_port_range", "40000 40099")
        .listener(40090)
        .listener(40091);
    let mut later = base.sockets(69, 6, "10.1.1.1", 80, 40000);
    later.taken_at += 10_000;
    let earlier = Host::new()
        .set("net.ipv4.ip_local_port_range", "40000 40099")
        .listener(40090)
        .listener(40091)
        .sockets(19, 6, "10.1.1.1", 80, 40000);
    let (now, before) = (later.snapshot(), earlier.snapshot());
    let f = diagnose(&DoctorInput {
        nginx: &[],
        trace: None,
        now: &now,
        earlier: Some(&before),
    });
    let e = find(&f, "port-exhaustion-risk");
    assert!(e.evidence.contains("71 of 100"), "{}", e.evidence);
    assert!(
        e.evidence.contains("grew 5.0/s over the last 10.0 s"),
        "{}",
        e.evidence
    );
    assert!(e.evidence.contains("last about 6 s"), "{}", e.evidence);
    // Widening the range reserves the listening ports that fall into it.
    let reserved = e
        .sysctl_changes
        .iter()
        .find(|c| c.name == "net.ipv4.ip_local_reserved_ports")
        .unwrap();
    assert_eq!(reserved.recommended, "40090-40091");
}

#[test]
fn exhaustion_advice_follows_the_kernel_version() {
    let mut h = Host::new()
        .set("net.ipv4.ip_local_port_range", "40000 40099")
        .sockets(95, 6, "10.1.1.1", 80, 40000);
    let fix = find(&h.findings(), "port-exhaustion-risk").fix.clone();
    assert!(
        fix.contains("IP_BIND_ADDRESS_NO_PORT")
            && fix.contains("IP_LOCAL_PORT_RANGE socket option (Linux 6.3+)"),
        "{fix}"
    );
    h.kernel = "5.10.0".into();
    let fix = find(&h.findings(), "port-exhaustion-risk").fix.clone();
    assert!(
        fix.contains("IP_BIND_ADDRESS_NO_PORT") && !fix.contains("IP_LOCAL_PORT_RANGE"),
        "{fix}"
    );
    h.kernel = "3.10.0-1160.el7".into();
    assert!(
        find(&h.findings(), "port-exhaustion-risk")
            .fix
            .contains("predates IP_BIND_ADDRESS_NO_PORT")
    );
}

#[test]
fn tw_reuse_off_is_a_warning_under_pressure_and_info_otherwise() {
    let off = || Host::new().set("net.ipv4.tcp_tw_reuse", "0");
    let f = off().findings();
    let e = find(&f, "tw-reuse-off");
    assert_eq!(e.severity, Severity::Info);
    assert_eq!(e.sysctl_changes[0].recommended, "1");
    assert_eq!(e.sysctl_changes[0].current.as_deref(), Some("0"));
    let f = off().sockets(3000, 6, "10.1.1.1", 80, 33000).findings();
    assert_eq!(find(&f, "tw-reuse-off").severity, Severity::Warning);
    assert!(
        find(&f, "tw-reuse-off")
            .fix
            .contains("1000 ms after it entered TIME_WAIT")
    );
    assert!(
        !codes(&Host::new().set("net.ipv4.tcp_tw_reuse", "1").findings()).contains(&"tw-reuse-off")
    );
}

#[test]
fn old_kernels_get_the_old_reuse_rule() {
    let mut h = Host::new().set("net.ipv4.tcp_tw_reuse", "0");
    h.kernel = "5.15.0-91-generic".into();
    h.sysctls.remove("net.ipv4.tcp_tw_reuse_delay");
    assert!(
        find(&h.findings(), "tw-reuse-off")
            .fix
            .contains("Linux 6.14 made this tcp_tw_reuse_delay")
    );
}

#[test]
fn loopback_only_reuse_fires_for_remote_pressure_only() {
    let f = Host::new()
        .sockets(3000, 6, "127.0.0.1", 6379, 33000)
        .findings();
    assert!(!codes(&f).contains(&"tw-reuse-loopback-only"));
    let f = Host::new()
        .sockets(3000, 6, "10.2.2.2", 6379, 33000)
        .findings();
    assert_eq!(
        find(&f, "tw-reuse-loopback-only").severity,
        Severity::Warning
    );
}

#[test]
fn timestamps_off_fires() {
    let f = Host::new().set("net.ipv4.tcp_timestamps", "0").findings();
    let e = find(&f, "timestamps-off");
    assert!(e.evidence.contains("17.2 s"), "{}", e.evidence);
    assert!(!codes(&Host::new().findings()).contains(&"timestamps-off"));
}

#[test]
fn narrow_range_and_heavy_reservations_fire() {
    let f = Host::new()
        .set("net.ipv4.ip_local_port_range", "50000 59999")
        .findings();
    let e = find(&f, "port-range-narrow");
    assert!(
        e.evidence.contains("leaving 10,000 usable"),
        "{}",
        e.evidence
    );
    assert_eq!(e.sysctl_changes[0].recommended, "1024 65535");
    let f = Host::new()
        .set("net.ipv4.ip_local_reserved_ports", "32768-40000")
        .findings();
    assert!(codes(&f).contains(&"port-range-narrow"));
    let f = Host::new()
        .set("net.ipv4.ip_local_port_range", "1024 65535")
        .findings();
    assert!(!codes(&f).contains(&"port-range-narrow"));
}

#[test]
fn overflow_severity_follows_the_table_and_the_trend() {
    let mut h = Host::new();
    h.overflow = 45;
    let e = find(&h.findings(), "tw-bucket-overflow").clone();
    assert_eq!(e.severity, Severity::Info, "table far from full now");
    assert!(e.sysctl_changes.is_empty());
    let mut full = Host::new().set("net.ipv4.tcp_max_tw_buckets", "150");
    full.overflow = 45;
    full.tw_table = Some(150);
    let f = full.findings();
    let e = find(&f, "tw-bucket-overflow");
    assert_eq!(e.severity, Severity::Warning);
    assert_eq!(e.sysctl_changes[0].recommended, "1024");
    // Growing between two samples: critical.
    let before = full.snapshot();
    full.overflow = 95;
    full.taken_at += 5_000;
    let now = full.snapshot();
    let f = diagnose(&DoctorInput {
        nginx: &[],
        trace: None,
        now: &now,
        earlier: Some(&before),
    });
    let e = find(&f, "tw-bucket-overflow");
    assert_eq!(e.severity, Severity::Critical);
    assert!(
        e.evidence.contains("10.0/s over the last 5.0 s"),
        "{}",
        e.evidence
    );
    // The old kernels' log line alone fires too.
    let mut logged = Host::new();
    logged.kernel_log = vec!["TCP: time wait bucket table overflow".into()];
    assert!(codes(&logged.findings()).contains(&"tw-bucket-overflow"));
    assert!(!codes(&Host::new().findings()).contains(&"tw-bucket-overflow"));
}

#[test]
fn near_limit_fires_at_80_percent() {
    let mut h = Host::new().set("net.ipv4.tcp_max_tw_buckets", "1000");
    h.tw_table = Some(799);
    assert!(!codes(&h.findings()).contains(&"tw-buckets-near-limit"));
    h.tw_table = Some(800);
    assert_eq!(
        find(&h.findings(), "tw-buckets-near-limit").severity,
        Severity::Warning
    );
    h.tw_table = Some(1000);
    let f = h.findings();
    let e = find(&f, "tw-buckets-near-limit");
    assert_eq!(e.severity, Severity::Critical);
    assert_eq!(e.sysctl_changes[0].recommended, "2048");
}

#[test]
fn tw_recycle_fires_only_when_on() {
    let f = Host::new().set("net.ipv4.tcp_tw_recycle", "1").findings();
    assert_eq!(find(&f, "tw-recycle-enabled").severity, Severity::Critical);
    assert!(
        !codes(&Host::new().set("net.ipv4.tcp_tw_recycle", "0").findings())
            .contains(&"tw-recycle-enabled")
    );
}

#[test]
fn fin_timeout_lowered_is_explained() {
    let f = Host::new().set("net.ipv4.tcp_fin_timeout", "15").findings();
    let e = find(&f, "fin-timeout-misread");
    assert_eq!(e.severity, Severity::Info);
    assert!(e.sysctl_changes.is_empty());
    assert!(!codes(&Host::new().findings()).contains(&"fin-timeout-misread"));
}

#[test]
fn server_side_time_wait_fires_on_listening_ports() {
    let f = Host::new().listener(8080).accepted(10, 6, 8080).findings();
    let e = find(&f, "server-side-time-wait");
    assert_eq!(e.severity, Severity::Info);
    assert!(e.evidence.contains("port 8080: 10"), "{}", e.evidence);
    let f = Host::new()
        .listener(8080)
        .accepted(1000, 6, 8080)
        .findings();
    assert_eq!(
        find(&f, "server-side-time-wait").severity,
        Severity::Warning
    );
    assert!(!codes(&Host::new().listener(8080).findings()).contains(&"server-side-time-wait"));
}

#[test]
fn aliyun_tw_timeout_is_noted_and_used() {
    let f = Host::new().set("net.ipv4.tcp_tw_timeout", "10").findings();
    assert!(find(&f, "tw-timeout-available").evidence.contains("= 10 s"));
    assert!(!codes(&Host::new().findings()).contains(&"tw-timeout-available"));
}

#[test]
fn collection_problems_are_findings() {
    let mut h = Host::new();
    h.problems = vec![
        Problem::new(
            "kernel log (/dev/kmsg)",
            Cause::Permission,
            "Permission denied",
        ),
        Problem::new("netstat", Cause::Permission, "Permission denied"),
    ];
    let f = h.findings();
    let found: Vec<&Finding> = f
        .iter()
        .filter(|f| f.code == "collection-problem")
        .collect();
    let sev: Vec<Severity> = found.iter().map(|f| f.severity).collect();
    assert_eq!(sev, [Severity::Warning, Severity::Info]);
    assert!(found[0].fix.starts_with("Run as root"), "{}", found[0].fix);
    assert!(
        found[0]
            .evidence
            .contains("Not checked without it: tw-bucket-overflow"),
        "{}",
        found[0].evidence
    );
}

#[test]
fn a_malformed_value_is_named_and_not_advised_as_root() {
    let f = Host::new().set("net.ipv4.tcp_tw_reuse", "7").findings();
    let p = find(&f, "collection-problem");
    assert_eq!(p.title, "Could not understand net.ipv4.tcp_tw_reuse");
    assert!(
        p.evidence
            .starts_with("net.ipv4.tcp_tw_reuse: \"7\" is not 0, 1 or 2"),
        "{}",
        p.evidence
    );
    assert!(p.evidence.contains("tw-reuse-off, tw-reuse-loopback-only"));
    assert!(!p.fix.contains("root"), "{}", p.fix);
    // Neither reuse rule guesses a value for it.
    assert!(!codes(&f).contains(&"tw-reuse-off"));
    assert!(!codes(&f).contains(&"tw-reuse-loopback-only"));
}

#[test]
fn an_unknown_range_skips_the_port_rules_instead_of_assuming_the_default() {
    let f = Host::new()
        .set("net.ipv4.ip_local_port_range", "40000")
        .sockets(200, 6, "10.0.0.2", 80, 40000)
        .findings();
    assert!(!codes(&f).contains(&"port-exhaustion-risk"));
    assert!(!codes(&f).contains(&"port-range-narrow"));
    assert!(
        find(&f, "collection-problem")
            .evidence
            .contains("Not checked without it: port-exhaustion-risk")
    );
}

struct OneFile(&'static str);

impl timewait_nginx::Loader for OneFile {
    fn read(&self, _: &std::path::Path) -> std::io::Result<Vec<u8>> {
        Ok(self.0.as_bytes().to_vec())
    }
    fn glob(&self, _: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
        Ok(vec![])
    }
}

#[test]
fn an_nginx_upstream_without_keepalive_is_tied_to_the_time_wait_it_causes_and_ranked_first() {
    let conf = "http {\n  upstream app {\n    server 127.0.0.1:8080;\n  }\n  server {\n    location / { proxy_pass http://app; }\n  }\n}\n";
    let config = timewait_nginx::parse_file(
        &OneFile(conf),
        std::path::Path::new("/etc/nginx/nginx.conf"),
    )
    .unwrap();
    let nginx = [crate::nginx::NginxInput {
        config,
        version: Some(timewait_nginx::check::Version(1, 22, 1)),
    }];
    // The local backend on :8080 closes first: server-side TIME_WAIT there.
    let host = Host::new()
        .listener(8080)
        .accepted(1500, 6, 8080)
        .set("net.ipv4.tcp_tw_reuse", "0");
    let snap = host.snapshot();
    let f = diagnose(&DoctorInput {
        now: &snap,
        earlier: None,
        nginx: &nginx,
        trace: None,
    });
    assert_eq!(f[0].code, "nginx-upstream-no-keepalive", "{:?}", codes(&f));
    assert_eq!(f[0].severity, Severity::Warning);
    assert!(
        f[0].evidence.contains("holds 1,500 TIME_WAIT on port 8080"),
        "{}",
        f[0].evidence
    );
    let loc = f[0].location.as_ref().unwrap();
    assert_eq!((loc.file.as_str(), loc.line), ("/etc/nginx/nginx.conf", 2));
    assert!(codes(&f).contains(&"server-side-time-wait"));
    assert!(codes(&f).contains(&"tw-reuse-off"));
    // Without the TIME_WAIT, the nginx findings stay but are not raised or matched.
    let quiet = Host::new().snapshot();
    let f = diagnose(&DoctorInput {
        now: &quiet,
        earlier: None,
        nginx: &nginx,
        trace: None,
    });
    let n = f
        .iter()
        .find(|f| f.code == "nginx-upstream-no-keepalive")
        .unwrap();
    assert!(!n.evidence.contains("TIME_WAIT on port"), "{}", n.evidence);
}
