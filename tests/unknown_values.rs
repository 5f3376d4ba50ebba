//! A snapshot whose values are not what the kernel prints: `status --from`
//! and `doctor --from` show each as unknown, name it and say what was
//! expected, never print a default in its place, and exit as documented.

use std::process::{Command, Output};

use serde_json::Value;

fn timewait(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_timewait"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

/// The recorded mixed namespace with `tcp_tw_reuse` set to 7 and a reserved
/// port list that does not parse.
fn malformed_snapshot() -> std::path::PathBuf {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/hosts/netns-mixed/snapshot.json"
    ))
    .unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    v["sysctls"]["net.ipv4.tcp_tw_reuse"] = "7".into();
    v["sysctls"]["net.ipv4.ip_local_reserved_ports"] = "80-x".into();
    let path = std::env::temp_dir().join(format!("timewait-malformed-{}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
    path
}

fn problem<'a>(v: &'a Value, what: &str) -> &'a Value {
    v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["what"] == what)
        .unwrap_or_else(|| panic!("no problem for {what}: {v}"))
}

#[test]
fn status_and_doctor_show_malformed_values_as_unknown_naming_them() {
    let path = malformed_snapshot();
    let file = path.to_str().unwrap();

    let o = timewait(&["status", "--from", file]);
    assert_eq!(o.status.code(), Some(0));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(
        text.contains("tcp_tw_reuse=unknown (\"7\" is not 0, 1 or 2)"),
        "{text}"
    );
    assert!(!text.contains("tcp_tw_reuse=2"), "{text}");
    // Usable ports need the reserved list: unknown, not "none reserved".
    assert!(
        text.contains("→ unknown (needs ip_local_port_range and ip_local_reserved_ports) usable"),
        "{text}"
    );
    assert!(
        text.contains("net.ipv4.ip_local_reserved_ports: \"80-x\" is not"),
        "{text}"
    );

    let o = timewait(&["status", "--from", file, "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["settings"]["tw_reuse"].is_null());
    assert!(v["settings"]["reserved_ports"].is_null());
    assert!(v["settings"]["usable_ports"].is_null());
    assert_eq!(v["settings"]["port_range"], "40000-40999");
    let d = &v["time_wait"]["by_destination"][0];
    assert!(
        d["usable_ports"].is_null() && d["headroom_ratio"].is_null(),
        "{d}"
    );
    assert!(
        d["time_wait"].as_u64().unwrap() > 0,
        "counts are still known: {d}"
    );
    let p = problem(&v, "net.ipv4.tcp_tw_reuse");
    assert_eq!(p["cause"], "malformed");
    assert_eq!(p["error"], "\"7\" is not 0, 1 or 2");
    assert_eq!(
        problem(&v, "net.ipv4.ip_local_reserved_ports")["cause"],
        "malformed"
    );

    // doctor: a warning per unknown value (exit 1), naming it and what it
    // leaves unchecked; no advice to run as root; no reuse rule fires on a
    // guessed value.
    let o = timewait(&["doctor", "--from", file, "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let findings = v["findings"].as_array().unwrap();
    let reuse = findings
        .iter()
        .find(|f| f["title"] == "Could not understand net.ipv4.tcp_tw_reuse")
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(reuse["code"], "collection-problem");
    assert_eq!(reuse["severity"], "warning");
    let evidence = reuse["evidence"].as_str().unwrap();
    assert!(evidence.contains("\"7\" is not 0, 1 or 2"), "{evidence}");
    assert!(
        evidence.contains("Not checked without it: tw-reuse-off"),
        "{evidence}"
    );
    assert!(!reuse["fix"].as_str().unwrap().contains("root"));
    let codes: Vec<&str> = findings
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert!(
        !codes.contains(&"tw-reuse-off") && !codes.contains(&"tw-reuse-loopback-only"),
        "{codes:?}"
    );

    let o = timewait(&["doctor", "--from", file]);
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(
        text.contains("Could not understand net.ipv4.ip_local_reserved_ports"),
        "{text}"
    );
    assert!(
        text.contains("Could not understand net.ipv4.tcp_tw_reuse"),
        "{text}"
    );
    std::fs::remove_file(&path).unwrap();
}
