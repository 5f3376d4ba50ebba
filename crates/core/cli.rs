//! The command line: every subcommand of DESIGN.md, with help that explains
//! the concept behind it. Parsing only; no I/O happens here.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use timewait_model::ports::{PortRange, ReservedPorts, TwReuse};
use timewait_model::wrap::Bandwidth;
use timewait_proxy::config::defaults;

/// Makes TCP TIME_WAIT trouble visible, explains it with numbers, and removes it.
///
/// The side of a TCP connection that closes first keeps its 4-tuple in
/// TIME_WAIT for 60 seconds on Linux, so a host that opens and closes many
/// short connections to one destination runs out of ephemeral ports
/// ("Cannot assign requested address", EADDRNOTAVAIL). timewait shows where
/// TIME_WAIT piles up, predicts when ports run out, and fixes it.
#[derive(Debug, Parser)]
#[command(
    name = "timewait",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// When to colour human output: auto (on a terminal, unless NO_COLOR is set), always, never.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,

    #[command(subcommand)]
    pub command: Command,
}

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// Colour on a terminal unless NO_COLOR is set.
    Auto,
    /// Always colour.
    Always,
    /// Never colour.
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Live census of TCP sockets: TIME_WAIT by destination, port headroom, timers.
    ///
    /// Counts sockets by state the way `ss` names them, and groups TIME_WAIT and
    /// ESTABLISHED sockets by destination (local ip, remote ip, remote port):
    /// how many ephemeral ports each destination holds, how many the port range
    /// allows, when the TIME_WAIT timers run out, and the sustainable rate of
    /// new connections toward it.
    Status(StatusArgs),
    /// Diagnose TIME_WAIT and port trouble on this host, with evidence and exact fixes.
    ///
    /// Reads sysctls, TcpExt counters, the kernel log, the socket census and an
    /// nginx configuration if one is found, and prints findings, each with a
    /// stable code, a severity, the numbers behind it and the fix. The exit
    /// status is the worst severity: 0 info, 1 warning, 3 critical.
    Doctor(DoctorArgs),
    /// Save everything doctor reads as one JSON document, to analyse elsewhere.
    ///
    /// `doctor --from FILE` and `status --from FILE` give the same results on
    /// another machine as they would have given here.
    Snapshot(SnapshotArgs),
    /// The arithmetic of TIME_WAIT: rate ceilings, sequence wrap, and a kernel simulator.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Generate short-lived or keep-alive load and count what fails and why.
    ///
    /// One request per connection (`--mode close`) is the traffic that fills
    /// TIME_WAIT; keep-alive (`--mode keepalive`) is the fix. Failures are
    /// counted by errno (EADDRNOTAVAIL, ECONNREFUSED, ...) or HTTP status class.
    Load(LoadArgs),
    /// Reproduce the article on this machine, in a throw-away network namespace.
    ///
    /// Runs port exhaustion with short connections, the effect of each kernel
    /// knob, and the keep-alive proxy fix, and prints measured numbers beside
    /// the model's predictions.
    Lab(LabArgs),
    /// nginx configuration checks.
    #[command(subcommand)]
    Nginx(NginxCommand),
    /// HTTP/1.1 reverse proxy that keeps upstream connections alive.
    ///
    /// nginx speaks HTTP/1.0 with `Connection: close` to its backends unless
    /// told otherwise, so every request leaves a TIME_WAIT socket behind. This
    /// proxy pools and reuses upstream connections by default: one backend
    /// connection serves request after request, and the client's
    /// `Connection: close` is never forwarded.
    #[command(allow_negative_numbers = true)]
    Proxy(ProxyArgs),
    /// Prometheus metrics of the census and counters, for fleet-wide alerts.
    ///
    /// Serves /metrics, collected at scrape time: sockets by state,
    /// TIME_WAIT, ports in use and headroom per destination (the unit the
    /// kernel exhausts; node_exporter has only a host total), server-side
    /// TIME_WAIT per service port, the TcpExt counters node_exporter drops
    /// (TCPTimeWaitOverflow, TWRecycled, TWKilled), the relevant sysctls and
    /// doctor's findings. Alerting rules, a Grafana dashboard and deployment
    /// files are under deploy/ in the repository.
    Exporter(ExporterArgs),
    /// Which process is burning the ports: connects, failures by errno, first closes.
    ///
    /// A TIME_WAIT socket has no owner and `ss -p` shows only live sockets, so
    /// the census cannot say who made them. trace reads kernel tracepoints
    /// (connect() and TCP state changes, from a tracefs instance of its own,
    /// filtered in the kernel; nothing to compile) and names, per process:
    /// its connects, the ones that failed and why (EADDRNOTAVAIL: no free
    /// port), and how often it closed first: the side that closes first
    /// holds the TIME_WAIT, so `closed_first` is the TIME_WAIT it made.
    /// Needs root. Mounts tracefs if it is not mounted.
    Trace(TraceArgs),
    /// Show (and with --apply, set) the sysctl changes doctor recommends.
    ///
    /// A dry run by default: prints the changes as a diff against current values.
    Tune(TuneArgs),
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Maximum sustainable rate of new outgoing connections to one destination.
    ///
    /// Toward one destination (remote ip:port) from one local address only the
    /// local port varies, and each port stays in TIME_WAIT for 60 s after this
    /// host closes the connection. The ceiling is usable ports / TIME_WAIT:
    /// 28,232 / 60 s = 470.5 per second with the kernel's default range.
    /// tcp_tw_reuse (with timestamps) lets a port be reused after
    /// tcp_tw_reuse_delay instead.
    Rate(RateArgs),
    /// How fast TCP sequence numbers wrap at a bandwidth, against 2·MSL.
    ///
    /// Sequence numbers are 32 bits; at high bandwidth a connection walks
    /// through half of them (2^31 bytes) faster than old segments die in the
    /// network. Below 2·MSL only timestamps (PAWS, RFC 7323) keep an old
    /// segment out of a new connection — which is also why tcp_tw_reuse needs
    /// them.
    Wrap(WrapArgs),
    /// Simulate a stream of connect() calls against the kernel's rules.
    ///
    /// An event-driven model of the Linux port search (__inet_hash_connect,
    /// with its even/odd passes), TIME_WAIT entry and expiry, tcp_tw_reuse with
    /// its delay and loopback rule, and tcp_max_tw_buckets. Predicts how many
    /// connects succeed, when the first EADDRNOTAVAIL happens, and how many
    /// TIME_WAIT sockets pile up. Checked against the real kernel by the test
    /// suite.
    Simulate(SimulateArgs),
}

/// Kernel knobs shared by `model rate` and `model simulate`.
#[derive(Debug, Args)]
pub struct KnobArgs {
    /// net.ipv4.ip_local_port_range, as LOW-HIGH (inclusive).
    #[arg(long, value_name = "LOW-HIGH", default_value = "32768-60999")]
    pub port_range: PortRange,
    /// net.ipv4.ip_local_reserved_ports: ports connect() skips, e.g. 8080,9000-9100.
    #[arg(long, value_name = "LIST", default_value = "")]
    pub reserved: ReservedPorts,
    /// How long TIME_WAIT lasts: 60 on Linux; Alibaba Cloud Linux's tcp_tw_timeout changes it.
    #[arg(long, value_name = "S", default_value_t = 60.0)]
    pub time_wait_seconds: f64,
    /// net.ipv4.tcp_tw_reuse: 0 off, 1 on, 2 loopback only (the default).
    #[arg(long, value_name = "0|1|2", default_value = "2")]
    pub tw_reuse: TwReuse,
    /// net.ipv4.tcp_timestamps: reuse needs them (0 off, 1 on, 2 on without offsets).
    #[arg(long, value_name = "0|1|2", default_value_t = 1)]
    pub timestamps: u8,
    /// net.ipv4.tcp_tw_reuse_delay in ms (Linux 6.14+; earlier kernels behave like 1000).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub reuse_delay_ms: u32,
    /// The remote address; tcp_tw_reuse=2 applies only if it is loopback.
    #[arg(long, value_name = "ADDR")]
    pub destination: Option<IpAddr>,
    /// Number of distinct destinations (remote ip:port), each its own 4-tuple space.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub destinations: u32,
    /// Number of local source addresses in use.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub source_ips: u32,
}

#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct RateArgs {
    #[command(flatten)]
    pub knobs: KnobArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct WrapArgs {
    /// Add a bandwidth to the table, e.g. 25Gbit, 1.5Mbit/s, 125MB/s (repeatable).
    #[arg(long, value_name = "BW")]
    pub bandwidth: Vec<Bandwidth>,
    /// Show only the --bandwidth rows, not the article's and today's links.
    #[arg(long, requires = "bandwidth")]
    pub only: bool,
    /// 2·MSL to compare against, in seconds (Linux's TIME_WAIT is 60).
    #[arg(long, value_name = "S", default_value_t = 60.0)]
    pub time_wait_seconds: f64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct SimulateArgs {
    /// New connections per second, spread over all destinations and source addresses.
    #[arg(long, value_name = "R")]
    pub rate: f64,
    /// Simulated seconds.
    #[arg(long, value_name = "S", default_value_t = 60.0)]
    pub duration: f64,
    #[command(flatten)]
    pub knobs: KnobArgs,
    /// net.ipv4.tcp_max_tw_buckets; when reached, closing sockets skip TIME_WAIT.
    #[arg(long, value_name = "N")]
    pub max_tw_buckets: Option<u64>,
    /// How long each connection stays open before this host closes it, in ms.
    #[arg(long, value_name = "MS", default_value_t = 0.0)]
    pub hold_ms: f64,
    /// Seed for the kernel's random choices (port offsets).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Where to look: this host, a named network namespace, or a process's namespace.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// How to read sockets: netlink sock_diag (falling back to /proc/net/tcp), or one of them only.
    #[arg(long, value_enum, default_value_t = ViaArg::Auto)]
    pub via: ViaArg,
    /// A named network namespace (/var/run/netns/NAME).
    #[arg(long, value_name = "NAME", conflicts_with = "pid")]
    pub netns: Option<String>,
    /// The network namespace of a process (e.g. a container's).
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Analyse a snapshot file (from `timewait snapshot`) instead of the live host.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["netns", "pid", "watch"])]
    pub from: Option<PathBuf>,
    /// How to group connections.
    #[arg(long, value_enum, default_value_t = GroupByArg::Destination)]
    pub by: GroupByArg,
    /// Show the N largest groups.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
    /// Refresh every SECS seconds and show rates of change (Ctrl-C stops).
    #[arg(long, value_name = "SECS")]
    pub watch: Option<f64>,
    /// With --watch: stop after N refreshes.
    #[arg(long, value_name = "N", requires = "watch")]
    pub count: Option<u64>,
    /// Print JSON (with --watch, one JSON document per line).
    #[arg(long)]
    pub json: bool,
}

/// `--via`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ViaArg {
    /// Netlink sock_diag; /proc/net/tcp{,6} if netlink fails (the output says so).
    Auto,
    /// Netlink sock_diag only: fail rather than fall back.
    Netlink,
    /// /proc/net/tcp{,6} only (slower; timers in 1/100 s).
    Proc,
}

/// `status --by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GroupByArg {
    /// (local ip, remote ip, remote port): the kernel's unit of port exhaustion.
    Destination,
    /// Remote address.
    RemoteIp,
    /// Local address.
    LocalIp,
    /// Socket state only.
    State,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Analyse a snapshot file (from `timewait snapshot`) instead of the live host.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["netns", "pid", "interval"])]
    pub from: Option<PathBuf>,
    /// nginx configuration to check (default: /etc/nginx/nginx.conf if present).
    #[arg(long, value_name = "PATH")]
    pub nginx: Option<PathBuf>,
    /// Sample twice, SECS apart, to measure rates and time to exhaustion.
    #[arg(long, value_name = "SECS")]
    pub interval: Option<f64>,
    /// Also trace connect() and TCP state changes for SECS seconds and name
    /// the processes behind the TIME_WAIT and EADDRNOTAVAIL found (needs root).
    #[arg(long, value_name = "SECS", conflicts_with = "from")]
    pub trace: Option<f64>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Processes of a named network namespace (/var/run/netns/NAME).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["pid", "all"])]
    pub netns: Option<String>,
    /// Processes in the network namespace of this process (e.g. a container's).
    #[arg(long, value_name = "PID", conflicts_with = "all")]
    pub pid: Option<u32>,
    /// Processes of every namespace, each shown with its namespace.
    #[arg(long)]
    pub all: bool,
    /// Seconds to trace (default 10; with --watch, until Ctrl-C).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Redraw the table every second, like top (on a terminal).
    #[arg(long, conflicts_with = "json")]
    pub watch: bool,
    /// Destinations shown per process.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub top: usize,
    /// Also trace connect()'s own failures (those that never start a
    /// handshake: no route, a firewall hook's EPERM) and network namespace
    /// switches (setns, unshare), so that a process that exec'd and exited
    /// before it was looked up is still placed. Costs more: every system
    /// call takes the kernel's slow path while tracing.
    #[arg(long)]
    pub syscalls: bool,
    /// Read TCP state changes from the tracefs event instead of filtering
    /// them with the built-in BPF program (which drops the unwanted ones
    /// before their fields are filled, so it costs the workload less).
    /// Without BTF or BPF the tracefs event is used anyway, with a note.
    #[arg(long)]
    pub no_bpf: bool,
    /// Print one JSON document at the end.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Write to FILE instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// http://HOST:PORT/PATH or tcp://HOST:PORT (loopback only unless --allow-remote).
    pub target: String,
    /// close: a new connection per request, closed by this side first (like
    /// an HTTP/1.0 proxy: a TIME_WAIT here each time); keepalive: reuse them.
    #[arg(long, value_enum, default_value_t = LoadMode::Close)]
    pub mode: LoadMode,
    /// Requests in flight at once (and connections, in keepalive mode).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub concurrency: usize,
    /// Open loop: requests per second, paced; latency counts from each
    /// request's intended send time (no coordinated omission).
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,
    /// Seconds to run (at most 3600).
    #[arg(long, value_name = "S")]
    pub duration: Option<f64>,
    /// Requests to make (at most 100,000,000).
    #[arg(long, value_name = "N")]
    pub requests: Option<u64>,
    /// Seconds for one connect and exchange before it counts as `timeout`.
    #[arg(long, value_name = "S", default_value_t = 5.0)]
    pub timeout: f64,
    /// Runtime threads (default: the cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// HTTP method.
    #[arg(long, value_name = "METHOD", default_value = "GET")]
    pub method: String,
    /// An extra HTTP header, `Name: value` (repeatable).
    #[arg(long = "header", short = 'H', value_name = "HEADER")]
    pub headers: Vec<String>,
    /// The HTTP request body, or the bytes a tcp:// connection sends.
    #[arg(long, value_name = "TEXT", alias = "payload")]
    pub body: Option<String>,
    /// Allow a target that is not on loopback.
    #[arg(long)]
    pub allow_remote: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `load --mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LoadMode {
    /// One request per connection, this side closes first.
    Close,
    /// Connections kept and reused.
    Keepalive,
}

#[derive(Debug, Args)]
pub struct LabArgs {
    /// Run one scenario: exhaustion, tw-reuse, wide-range, max-tw-buckets,
    /// server-closes or proxy.
    #[arg(long, value_name = "NAME")]
    pub scenario: Option<String>,
    /// Write a self-contained HTML report with an SVG chart per scenario.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum NginxCommand {
    /// Parse an nginx configuration and report the article's pitfalls with file:line.
    ///
    /// Upstreams without `keepalive`, `proxy_http_version 1.0`, a client's
    /// `Connection: close` forwarded upstream, and `proxy_set_header` lines
    /// silently lost by inheritance.
    Check(NginxCheckArgs),
    /// Parse an nginx configuration (with its includes) and print the tree.
    ///
    /// The tokenizer is a port of nginx's own: quoting, escapes, `#` only at
    /// the start of a word, `${var}`, `""` as an empty argument, Lua blocks.
    /// `--json` prints crossplane's JSON shape. A syntax error exits 2 with
    /// `file:line: message` as nginx reports it.
    Parse(NginxParseArgs),
}

#[derive(Debug, Args)]
pub struct NginxParseArgs {
    /// The main configuration file (relative includes resolve against its
    /// directory), or `-` for `nginx -T` output on standard input.
    pub path: PathBuf,
    /// Print crossplane's JSON shape: {status, errors, config: [{file, parsed: [...]}]}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct NginxCheckArgs {
    /// The main configuration file.
    #[arg(default_value = "/etc/nginx/nginx.conf")]
    pub path: PathBuf,
    /// The nginx version whose defaults apply (e.g. 1.29.7, which made
    /// HTTP/1.1, no Connection header and keepalive 32 the upstream
    /// defaults). Without it: the installed `nginx -v`, else the older
    /// defaults (said in the output).
    #[arg(long, value_name = "X.Y.Z")]
    pub nginx_version: Option<String>,
    /// Print JSON: {nginx_version, version_source, findings: [{code, severity, title, file, line, evidence, fix}]}.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// Print the fixes as a unified diff for `patch -p0` (run from the
    /// directory the paths are relative to). Fixes that need judgement (an
    /// implicit upstream to turn into an upstream block, a map, a misplaced
    /// keepalive) are left out; `nginx check` still reports them.
    #[arg(long, conflicts_with_all = ["json", "format"])]
    pub diff: bool,
    /// Output format: `human` (grouped by file, like a compiler) or `github`
    /// (workflow annotations, for CI).
    #[arg(long, value_enum, default_value_t = NginxFormat::Human)]
    pub format: NginxFormat,
}

/// `nginx check --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NginxFormat {
    /// Grouped by file.
    Human,
    /// `::warning file=…,line=…::…` lines.
    Github,
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Address to listen on, e.g. 0.0.0.0:8080.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Backend address HOST:PORT (repeatable; balanced round-robin).
    #[arg(long, value_name = "ADDR")]
    pub upstream: Vec<String>,
    /// Worker threads, each with its own listener and connection pool.
    #[arg(long, value_name = "N", default_value_t = defaults::WORKERS)]
    pub workers: usize,
    /// How to choose a backend.
    #[arg(long, value_enum, default_value_t = BalanceArg::RoundRobin)]
    pub balance: BalanceArg,
    /// Failures in a row after which a backend is left alone for --fail-timeout.
    #[arg(long, value_name = "N", default_value_t = defaults::MAX_FAILS)]
    pub max_fails: u32,
    /// Seconds a failing backend is left alone before it is tried again.
    #[arg(long, value_name = "S", default_value_t = defaults::FAIL_TIMEOUT)]
    pub fail_timeout: f64,
    /// Configuration file: listeners, routes by host and path prefix to named
    /// upstream groups, header rules (see the proxy's module docs for the
    /// format). Every setting is then the file's: no other flag may be given.
    #[arg(short = 'c', long, value_name = "FILE.toml", conflicts_with_all = [
        "listen", "upstream", "workers", "balance", "max_fails", "fail_timeout", "admin",
        "keepalive", "shared_pool", "idle_timeout", "max_lifetime", "max_requests",
        "connect_timeout", "response_timeout", "header_timeout", "body_timeout",
        "access_log", "max_headers", "max_connections", "via",
    ])]
    pub config: Option<PathBuf>,
    /// Serve /metrics and /healthz on this address.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
    /// Idle connections kept per backend and worker (nginx's `keepalive N`).
    #[arg(long, value_name = "N", default_value_t = defaults::KEEPALIVE)]
    pub keepalive: usize,
    /// One pool of idle backend connections for all workers instead of one
    /// per worker: `--keepalive` then bounds them per backend in all. Each
    /// reuse moves the socket between workers (see BENCHMARKS.md for the cost).
    #[arg(long)]
    pub shared_pool: bool,
    /// Close idle backend connections after S seconds; keep it below the backends' own keep-alive timeout.
    #[arg(long, value_name = "S", default_value_t = defaults::IDLE_TIMEOUT)]
    pub idle_timeout: f64,
    /// Close a backend connection after it has been open S seconds (default: never).
    #[arg(long, value_name = "S")]
    pub max_lifetime: Option<f64>,
    /// Close a backend connection after N requests (default: never; each close means a new connection).
    #[arg(long, value_name = "N")]
    pub max_requests: Option<u64>,
    /// Seconds to connect to a backend before answering 502.
    #[arg(long, value_name = "S", default_value_t = defaults::CONNECT_TIMEOUT)]
    pub connect_timeout: f64,
    /// Seconds for a backend to start answering before 504.
    #[arg(long, value_name = "S", default_value_t = defaults::RESPONSE_TIMEOUT)]
    pub response_timeout: f64,
    /// Seconds a client has to send a whole request head (slowloris protection).
    #[arg(long, value_name = "S", default_value_t = defaults::HEADER_TIMEOUT)]
    pub header_timeout: f64,
    /// Seconds a request or response body may stall (no byte sent, or none
    /// taken by the receiver) before the exchange is cut off, like nginx's
    /// `client_body_timeout`, `proxy_read_timeout` and `send_timeout`.
    #[arg(long, value_name = "S", default_value_t = defaults::BODY_TIMEOUT)]
    pub body_timeout: f64,
    /// Write a line per request to stdout: time (Unix ms), client, request line,
    /// status, backend, milliseconds.
    #[arg(long)]
    pub access_log: bool,
    /// Most headers a request may carry (more: 431); at most 128.
    #[arg(long, value_name = "N", default_value_t = defaults::MAX_HEADERS)]
    pub max_headers: usize,
    /// Client connections each worker serves at once (default: from the
    /// open-files limit, which the proxy raises to its hard limit, leaving
    /// room for a backend connection per client and the idle pool). Past it
    /// the longest-idle keep-alive connection is closed to admit a new
    /// client; with none idle, new clients wait in the accept queue.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Add `Via: 1.1 NAME` to requests and responses.
    #[arg(long, value_name = "NAME")]
    pub via: Option<String>,
}

/// `proxy --balance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BalanceArg {
    /// In turn.
    RoundRobin,
    /// The backend with the fewest requests in flight.
    LeastConn,
}

#[derive(Debug, Args)]
pub struct ExporterArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Address to serve /metrics and /healthz on (loopback by default: put
    /// it elsewhere only behind your own access control).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9809")]
    pub listen: String,
    /// Destinations (and service ports) exported one series each, by ports
    /// in use; the rest are summed into one series labelled `other`.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub top: usize,
    /// Reuse a collection for scrapes within this many milliseconds, so
    /// several Prometheus servers cost one read of the kernel.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub cache_ms: u64,
    /// Print the metrics of a snapshot file (from `timewait snapshot`) once
    /// and exit, instead of serving.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["netns", "pid", "trace", "live"])]
    pub from: Option<PathBuf>,
    /// Also trace connect() and TCP state changes while serving, and export
    /// per process connects, failed connects by errno and first closes
    /// (needs root; see `timewait trace`).
    #[arg(long)]
    pub trace: bool,
    /// Count sockets live instead of dumping them at each scrape: BPF
    /// programs on the TCP state and timer tracepoints keep the counts by
    /// destination, so a scrape costs the number of destinations, not the
    /// number of sockets (needs root; one dump at start). Unknown this
    /// way: the SYN_RECV count and when TIME_WAIT timers fire; an orphan
    /// in FIN_WAIT2 is counted as the TIME_WAIT minisocket it is; ports
    /// held by bind() alone are dumped once a minute.
    #[arg(long, conflicts_with = "via")]
    pub live: bool,
}

#[derive(Debug, Args)]
pub struct TuneArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Set the values now (in the target namespace) and, for this host's own
    /// namespace, write /etc/sysctl.d/90-timewait.conf (the old one kept as .bak).
    #[arg(long)]
    pub apply: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }
}
