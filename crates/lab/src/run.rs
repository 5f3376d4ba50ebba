//! Running a scenario: a namespace with its settings, the backend (and the
//! proxy), the paced stream from the load generator, the census sampled
//! each second, and the model's prediction of the same stream.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use timewait_analysis::status::DestinationRow;
use timewait_analysis::{GroupBy, StatusReport, analyse};
use timewait_host::scratch::ScratchNetns;
use timewait_host::{Target, collect};
use timewait_load::plan::{Mode, Plan, Target as LoadTarget};
use timewait_model::ports::{ConnectPorts, PortRange, ReservedPorts, TwReuse};
use timewait_model::simulate::{SimInput, SimReport, simulate};
use timewait_nginx::check::Version;
use timewait_snapshot::Snapshot;

use crate::LabError;
use crate::backend::Backend;
use crate::report::{Held, Outcome, Point, ScenarioReport, close_enough};
use crate::scenario::{
    BACKEND_IP, BACKEND_PORT, DURATION_SECONDS, NGINX_PORT, PROXY_PORT, RATE, Scenario, Traffic,
};
use crate::service::Service;

fn counter(snap: &Snapshot, name: &str) -> u64 {
    snap.counter("TcpExt", name)
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(0)
}

/// A census's destinations that are the backend.
fn toward_backend(r: &StatusReport) -> impl Iterator<Item = &DestinationRow> {
    r.time_wait
        .by_destination
        .iter()
        .filter(|d| d.remote_ip == IpAddr::V4(BACKEND_IP) && d.remote_port == BACKEND_PORT)
}

/// Who holds the TIME_WAIT of the backend leg in a census.
fn held(r: &StatusReport) -> Held {
    Held {
        by_backend: r
            .time_wait
            .server_side
            .iter()
            .filter(|x| x.local_port == BACKEND_PORT)
            .map(|x| x.time_wait)
            .sum(),
        toward_backend: toward_backend(r).map(|d| d.time_wait).sum(),
    }
}

/// TIME_WAIT of the backend leg on the side that closes first, in the
/// namespace this runs in, and the client's port headroom toward the
/// backend (all free when it holds no socket toward it). Connections to a
/// proxy are not the leg under test.
fn time_wait_now(traffic: Traffic) -> Option<(u64, f64)> {
    let snap = collect(&Target::Current, timewait_host::Via::Auto, false).ok()?;
    let r = analyse(&snap, GroupBy::Destination, usize::MAX);
    let h = held(&r);
    let tw = match traffic {
        // The backend may close first.
        Traffic::ServerCloses | Traffic::Nginx { .. } => h.by_backend + h.toward_backend,
        Traffic::ClientCloses | Traffic::Proxy => h.toward_backend,
    };
    let mut headroom = 1.0;
    for d in toward_backend(&r) {
        headroom = f64::min(headroom, d.headroom_ratio?);
    }
    Some((tw, headroom))
}

fn plan(traffic: Traffic) -> Plan {
    let backend = SocketAddr::from((BACKEND_IP, BACKEND_PORT));
    let (target, mode, concurrency) = match traffic {
        Traffic::ClientCloses => (LoadTarget::Tcp { addr: backend }, Mode::Close, 64),
        Traffic::ServerCloses => (
            LoadTarget::Http {
                addr: backend,
                host: backend.to_string(),
                path: "/".into(),
            },
            Mode::Close,
            64,
        ),
        // Clients keep their connections to the proxy: the leg under test
        // is the proxy's to the backend.
        Traffic::Proxy | Traffic::Nginx { .. } => {
            let port = if traffic == Traffic::Proxy {
                PROXY_PORT
            } else {
                NGINX_PORT
            };
            (
                LoadTarget::Http {
                    addr: SocketAddr::from(([127, 0, 0, 1], port)),
                    host: format!("127.0.0.1:{port}"),
                    path: "/".into(),
                },
                Mode::KeepAlive,
                8,
            )
        }
    };
    Plan {
        target,
        mode,
        concurrency,
        rate: Some(RATE),
        duration: Some(Duration::from_secs_f64(DURATION_SECONDS)),
        requests: None,
        timeout: Duration::from_secs(2),
        threads: 1,
        method: "GET".into(),
        headers: vec![],
        body: vec![],
    }
}

fn settings(s: &Scenario, has_delay: bool) -> Vec<(&'static str, String)> {
    let mut v = vec![
        (
            "net.ipv4.ip_local_port_range",
            format!("{} {}", s.port_range.0, s.port_range.1),
        ),
        ("net.ipv4.tcp_tw_reuse", s.tw_reuse.to_string()),
        ("net.ipv4.tcp_timestamps", "1".into()),
    ];
    if has_delay {
        v.push((
            "net.ipv4.tcp_tw_reuse_delay",
            s.tw_reuse_delay_ms.to_string(),
        ));
    }
    if let Some(n) = s.max_tw_buckets {
        v.push(("net.ipv4.tcp_max_tw_buckets", n.to_string()));
    }
    v
}

/// The model's prediction of the scenario's stream.
fn predict(s: &Scenario) -> Result<(SimReport, &'static str), LabError> {
    let range = PortRange::new(s.port_range.0, s.port_range.1)
        .map_err(|e| LabError::Model(e.to_string()))?;
    let r = simulate(&SimInput {
        rate: RATE,
        duration_seconds: DURATION_SECONDS,
        ports: ConnectPorts::new(range, ReservedPorts::none()),
        time_wait_seconds: 60.0,
        tw_reuse: match s.tw_reuse {
            0 => TwReuse::Off,
            1 => TwReuse::On,
            _ => TwReuse::LoopbackOnly,
        },
        timestamps: 1,
        destination_is_loopback: false,
        reuse_delay_ms: s.tw_reuse_delay_ms,
        max_tw_buckets: s.max_tw_buckets,
        destinations: 1,
        source_ips: 1,
        hold_ms: 0.0,
        seed: 7,
    })
    .map_err(|e| LabError::Model(e.to_string()))?;
    Ok((r, "model simulate"))
}

fn per_second(r: &SimReport) -> Vec<Point> {
    let secs = DURATION_SECONDS.ceil() as u64;
    (0..secs)
        .map(|sec| {
            let in_it = r
                .timeline
                .iter()
                .filter(|b| b.start_seconds >= sec as f64 && b.start_seconds < (sec + 1) as f64);
            let (mut ok, mut failed, mut tw) = (0, 0, None);
            for b in in_it {
                ok += b.succeeded;
                failed += b.failed;
                tw = Some(b.time_wait);
            }
            Point {
                second: sec,
                succeeded: ok,
                failed,
                time_wait: tw,
            }
        })
        .collect()
}

/// Runs one scenario; `exe` is the timewait binary (for the proxy),
/// `nginx` the installed nginx's version (for the nginx scenarios).
pub fn run_scenario(
    s: &Scenario,
    exe: &Path,
    nginx: Option<Version>,
    stop: &Arc<AtomicBool>,
) -> Result<ScenarioReport, LabError> {
    let ns = ScratchNetns::create()?;
    ns.add_address(&format!("{BACKEND_IP}/32"))?;
    let has_delay = Path::new("/proc/sys/net/ipv4/tcp_tw_reuse_delay").exists();
    let sysctls = settings(s, has_delay);
    for (k, v) in &sysctls {
        ns.sysctl(k, v)?;
    }
    let backend = Backend::start(&ns, (BACKEND_IP, BACKEND_PORT).into(), s.traffic)?;
    let nginx_version = match s.traffic {
        Traffic::Nginx { .. } => nginx,
        _ => None,
    };
    let _proxy = match s.traffic {
        Traffic::Proxy => Some(Service::timewait_proxy(&ns, exe)?),
        Traffic::Nginx { keepalive } => Some(Service::nginx(&ns, keepalive)?),
        Traffic::ClientCloses | Traffic::ServerCloses => None,
    };
    let before = collect(&ns.target(), timewait_host::Via::Auto, false)?;
    let p = plan(s.traffic);
    let traffic = s.traffic;
    // The load generator sets its flag when it ends: a flag of its own,
    // raised when the lab's is (Ctrl-C, SIGTERM).
    let stop_load = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (lab, load) = (stop.clone(), stop_load.clone());
        std::thread::spawn(move || {
            while !load.load(Ordering::Relaxed) {
                if lab.load(Ordering::Relaxed) {
                    load.store(true, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let for_load = stop_load.clone();
    let load = ns
        .spawn(move || {
            let sampler: timewait_load::run::Sampler = Box::new(move || time_wait_now(traffic));
            timewait_load::run(&p, Some(sampler), for_load)
        })?
        .join()
        .map_err(|_| LabError::Load("the load thread panicked".into()))?
        .ok_or_else(|| LabError::Load("could not enter the namespace".into()))?
        .map_err(|e| LabError::Load(e.to_string()));
    stop_load.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    let mut load = load?;
    // Closes of the last connections finish their handshakes; then one
    // more sample, for the end of the last second.
    std::thread::sleep(Duration::from_millis(100));
    let last = ns
        .spawn(move || time_wait_now(traffic))?
        .join()
        .ok()
        .flatten()
        .flatten()
        .map(|s| s.0);
    if let Some(tw) = last {
        load.time_wait_peak = Some(load.time_wait_peak.map_or(tw, |p| p.max(tw)));
        if let Some(end) = load.series.last_mut().filter(|s| s.time_wait.is_none()) {
            end.time_wait = Some(tw);
        }
    }
    let after = collect(&ns.target(), timewait_host::Via::Auto, false)?;
    let delta = |name| counter(&after, name).saturating_sub(counter(&before, name));

    let failed_eaddrnotavail = load.errors.get("EADDRNOTAVAIL").copied().unwrap_or(0);
    let series: Vec<Point> = load
        .series
        .iter()
        .map(|x| Point {
            second: x.second,
            succeeded: x.completed,
            failed: x.failed,
            time_wait: x.time_wait,
        })
        .collect();
    let measured = Outcome {
        source: "kernel".into(),
        attempted: load.attempted,
        succeeded: load.succeeded,
        failed_eaddrnotavail,
        other_errors: load
            .errors
            .iter()
            .filter(|(k, _)| k.as_str() != "EADDRNOTAVAIL")
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        first_failure_second: series.iter().find(|p| p.failed > 0).map(|p| p.second),
        time_wait_peak: load.time_wait_peak,
        tw_reused: Some(delta("TWRecycled")),
        tw_overflow: Some(delta("TCPTimeWaitOverflow")),
        series,
    };
    let predicted = match s.traffic {
        Traffic::ClientCloses => {
            let (r, source) = predict(s)?;
            let series = per_second(&r);
            Outcome {
                source: source.into(),
                attempted: r.attempted,
                succeeded: r.succeeded,
                failed_eaddrnotavail: r.failed_eaddrnotavail,
                other_errors: BTreeMap::new(),
                first_failure_second: r.first_failure_at_seconds.map(|t| t.floor() as u64),
                time_wait_peak: Some(r.peak_time_wait),
                tw_reused: Some(r.tw_reused),
                tw_overflow: Some(r.tw_overflow),
                series,
            }
        }
        // The side that closes first holds the TIME_WAIT: the client none
        // (server-closes), or nobody (keep-alive to the backend). The
        // server holds one per client 4-tuple at most: a client's SYN takes
        // over the server's TIME_WAIT of its 4-tuple, and a client that
        // holds no TIME_WAIT finds a free port in its first pass, over the
        // ports with the parity of the range's low end.
        Traffic::ServerCloses | Traffic::Proxy | Traffic::Nginx { .. } => {
            let attempted = (RATE * DURATION_SECONDS).round() as u64;
            // nginx's defaults: HTTP/1.0 to the backend, which closes first.
            let server = matches!(
                s.traffic,
                Traffic::ServerCloses | Traffic::Nginx { keepalive: false }
            );
            let per = RATE.round() as u64;
            let first_pass = u64::from(s.port_range.1 - s.port_range.0) / 2 + 1;
            // nginx closes a kept upstream connection after its
            // keepalive_requests-th request (a TIME_WAIT on nginx).
            let requests_per_connection = match s.traffic {
                Traffic::Nginx { keepalive: true } => {
                    nginx_version.and_then(Version::upstream_keepalive_requests)
                }
                _ => None,
            };
            let held = |n: u64| match (server, requests_per_connection) {
                (true, _) => n.min(first_pass),
                (false, Some(k)) => n / k,
                (false, None) => 0,
            };
            Outcome {
                source: match (server, requests_per_connection) {
                    (true, _) => "model rule: the side that closes first holds the TIME_WAIT, one per client 4-tuple (the client's first-pass ports)".into(),
                    (false, Some(k)) => format!("model rule: nginx closes a kept-alive upstream connection after {k} requests (the default of upstream keepalive_requests in this nginx): at most one TIME_WAIT on nginx per {k} requests"),
                    (false, None) => "model rule: kept-alive connections are never closed, so nothing enters TIME_WAIT".into(),
                },
                attempted,
                succeeded: attempted,
                failed_eaddrnotavail: 0,
                other_errors: BTreeMap::new(),
                first_failure_second: None,
                time_wait_peak: Some(held(attempted)),
                tw_reused: Some(0),
                tw_overflow: Some(0),
                series: (0..DURATION_SECONDS.ceil() as u64)
                    .map(|sec| Point {
                        second: sec,
                        succeeded: per,
                        failed: 0,
                        time_wait: Some(held(per * (sec + 1))),
                    })
                    .collect(),
            }
        }
    };
    let agrees = close_enough(measured.succeeded, predicted.succeeded)
        && close_enough(
            measured.failed_eaddrnotavail,
            predicted.failed_eaddrnotavail,
        );
    let held = held(&analyse(&after, GroupBy::Destination, usize::MAX));
    let verdict = verdict(s, &measured, &predicted, backend.accepted(), held);
    let mut settings: BTreeMap<String, String> = sysctls
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    if let Some(v) = nginx_version {
        settings.insert("nginx".into(), v.to_string());
    }
    settings.insert(
        "traffic".into(),
        format!(
            "{} connects/s for {} s toward {BACKEND_IP}:{BACKEND_PORT} ({})",
            RATE,
            DURATION_SECONDS,
            match s.traffic {
                Traffic::ClientCloses => "connect, client closes first",
                Traffic::ServerCloses => "HTTP/1.0, the backend closes first",
                Traffic::Proxy => "HTTP through timewait proxy to the backend",
                Traffic::Nginx { keepalive: false } =>
                    "HTTP through nginx (its upstream defaults) to the backend",
                Traffic::Nginx { keepalive: true } =>
                    "HTTP through nginx (upstream keepalive) to the backend",
            }
        ),
    );
    Ok(ScenarioReport {
        name: s.name.into(),
        claim: s.claim.into(),
        settings,
        measured,
        predicted,
        time_wait_held: held,
        agrees,
        verdict,
    })
}

fn verdict(s: &Scenario, m: &Outcome, p: &Outcome, backend_accepts: u64, held: Held) -> String {
    let when = |o: &Outcome| {
        o.first_failure_second
            .map_or("never".to_string(), |t| format!("in second {}", t + 1))
    };
    match s.traffic {
        Traffic::ClientCloses => format!(
            "{} of {} connects succeeded (model {}), {} failed with EADDRNOTAVAIL (model {}); first failure {} (model {}); TIME_WAIT peak {} (model {}); overflow {} (model {})",
            m.succeeded,
            m.attempted,
            p.succeeded,
            m.failed_eaddrnotavail,
            p.failed_eaddrnotavail,
            when(m),
            when(p),
            m.time_wait_peak.map_or("unknown".into(), |v| v.to_string()),
            p.time_wait_peak.unwrap_or(0),
            m.tw_overflow.unwrap_or(0),
            p.tw_overflow.unwrap_or(0),
        ),
        Traffic::ServerCloses => format!(
            "{} of {} requests succeeded, {} EADDRNOTAVAIL: the client held no TIME_WAIT; the backend's TIME_WAIT peak {} (model {}: one per client port of the first pass, each taken over by that port's next SYN)",
            m.succeeded,
            m.attempted,
            m.failed_eaddrnotavail,
            m.time_wait_peak.map_or("unknown".into(), |v| v.to_string()),
            p.time_wait_peak.unwrap_or(0),
        ),
        Traffic::Proxy | Traffic::Nginx { .. } => format!(
            "{} of {} requests succeeded, {} failed; the backend accepted {} connections for them; TIME_WAIT peak {} (model {}); at the end {} on the backend, {} on the proxy toward it",
            m.succeeded,
            m.attempted,
            m.attempted - m.succeeded,
            backend_accepts,
            m.time_wait_peak.map_or("unknown".into(), |v| v.to_string()),
            p.time_wait_peak.unwrap_or(0),
            held.by_backend,
            held.toward_backend,
        ),
    }
}
